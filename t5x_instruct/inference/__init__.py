"""Evaluation and inference outside training: ``python -m t5x_instruct.eval`` / ``.infer``.

* :mod:`model_setup`: the model of a checkpoint (with the run's plug-ins), params restored
  straight into shardings;
* :mod:`eval_run`: ``evaluate``, the tasks' own metrics per checkpoint step, resumable;
* :mod:`infer_run`: ``infer``, predictions or target scores as JSONL, in resumable chunks;
* :mod:`files`: atomic and chunked result files.
"""
