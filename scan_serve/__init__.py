"""scan-serve: the gRPC gateway in front of an exported model version.

Modules, by role:
* `proto/`    generated stubs of protos/scan/v1/scan.proto;
* `inputs`    request images -> model input (the training preprocessing), with the input rules;
* `backends`  embedded onnxruntime (with in-process batching) or a Triton server;
* `model`     a served version: metadata, prototype index, backend; cluster names;
* `metrics`   Prometheus metrics;
* `server`    the servicer, operator auth, health, reflection, `create_server` and `serve`;
* `cli`       `scan-serve`.
"""
