"""The classifier service: turns a request's text into a category.

The engine is split by concept: `tokens` (text to padded int64 batches), `model_dir`
(reading a model directory in the upstream layout), `backend` (the inference seam),
`onnx_backend` (its onnxruntime implementation), `labels` (model labels to config
categories) and `engine` (the three together). `model/` builds the default model.
The worker's logic is plain modules too: `admission` (what gets in), `route_chat` (a chat
request's route), `classify_texts` (the classification API's bookkeeping) and `intake` (from a
message or a finished batch to what is sent); `handlers` and `app` are the NATS side.
Nothing is re-exported here so that importing one part never loads onnxruntime.
"""

__all__: list[str] = []
