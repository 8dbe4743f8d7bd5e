"""Inference models as the marketplace handles them; no Django import, so they can be tested and benchmarked alone.

- `validation`: checking a customer's uploaded ONNX file (`validate_onnx`, `ModelRejected`, `ModelInfo`).
- `quantization`: building the fp16 / int8 / emulated-fp8 variants cars run (`build_variant`).
- `accuracy`: how close a variant's outputs are to FP32, and the accuracy gate (`compare`, `passes`).
- `costing`: MACs and compute-hours per item, and the precision "auto" picks (`macs_per_item`, `ch_per_item`,
  `pick_auto`).
- `catalogue`: the models and demo datasets shipped with the platform (MiniLM embeddings, a digits classifier).

Running a model over items is `fleet.agent.inference.ModelRunner`, shared with the car.
"""
