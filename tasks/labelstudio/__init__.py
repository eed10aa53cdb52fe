"""Label Studio for the data engine: a local server, projects with SAM predictions, incremental sync of human
masks, the interactive SAM ML backend, and the Label Studio annotator.

Modules: server (install/up/down/status), client (REST with retries), convert (brush RLE <-> COCO RLE, percent <->
pixels), project (labeling config, tasks, predictions), sync (annotations -> masks table), ml_backend (/health,
/setup, /predict), annotator (the Annotator interface for people).
"""
