"""The mxnet worker's code: imported only in its worker process."""
