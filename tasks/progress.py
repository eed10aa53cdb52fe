"""How a task reports its progress: ``on_progress(done, total)``, a plain callback with counts of files, images
or training steps. The CLI's bar and a flow's progress artifact receive it (flows.progress); a task knows
nothing of either."""

from __future__ import annotations

from collections.abc import Callable

from prefect.cache_policies import DEFAULT

OnProgress = Callable[[int, int], None]

# Prefect's cache key of a task run hashes its inputs. A callback is not one of them: it changes nothing in the
# result, and a closure over a bar or an API client cannot be hashed (Prefect logs a traceback for each call).
CACHE_POLICY = DEFAULT - "on_progress"
