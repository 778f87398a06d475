"""Registers the JSONL/CSV tasks bound in gin: ``import_task_modules.modules = ['tasks.custom']``
plus ``register_jsonl_tasks.tasks = [{'name': ..., 'paths': [...], 'format': ...}]``."""

from t5x_instruct.data.custom import register_jsonl_tasks

TASK_NAMES = register_jsonl_tasks()
