"""The three stages of the data engine, named once: the flows' parameters and the CLI's choices read them here
(a module without heavy imports, so `sam-engine --help` stays fast)."""

from typing import Literal, get_args

Stage = Literal["assisted_manual", "semi_automatic", "fully_automatic"]
STAGES: tuple[str, ...] = get_args(Stage)
