"""The onnxruntime worker's code: imported only in its worker process."""
