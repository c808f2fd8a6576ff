"""The classifier service: turns a request's text into a category.

The engine is split by concept: `tokens` (text to padded int64 batches), `model_dir`
(reading a model directory in the upstream layout), `backend` (the inference seam),
`onnx_backend` (its onnxruntime implementation), `labels` (model labels to config
categories) and `engine` (the three together). `model/` builds the default model.
Nothing is re-exported here so that importing one part never loads onnxruntime.
"""

__all__: list[str] = []
