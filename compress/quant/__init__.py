"""Quantization: the number formats (simulated), their real packed size, and real int8 backends.

Three things are kept apart everywhere in this package, because users confuse them:

* **quality of a number format** -- :mod:`compress.quant.rtn` and :mod:`compress.quant.gptq`
  round the weights to a b-bit grid and store the rounded values back in float
  ("fake quantization", ``simulated=True`` in the report). The model's accuracy is
  the format's accuracy; its bytes and speed are still fp32.
* **bytes the format really takes** -- :mod:`compress.quant.packing` counts
  ``bits x weights + scales/zeros + kept outliers`` and can actually pack the codes
  (``pack_codes``), so the number in the report is checked against real bytes.
* **speed on the device at hand** -- measured, never stated: every run's profile
  times it against the dense model in the same process (``latency_vs_dense``,
  :mod:`eval.paired`). Real low-bit kernels live in :mod:`compress.quant.dynamic`
  (``torch.ao`` dynamic int8), :mod:`compress.quant.onnx` (ONNX Runtime dynamic int8)
  and :mod:`compress.quant.runtime` (ONNX Runtime / OpenVINO int8 and int4, compared in
  ``bench/cpu_engines.py``, reports/bench/cpu_engines.json); bitsandbytes and quanto
  save memory (their CPU speed: ``bench/quant_speed.py --extra``,
  reports/bench/quant_speed.json).
"""
