"""Native model -> ONNX (torch.onnx, tf2onnx, MXNet's exporter), one module per framework, imported lazily."""
