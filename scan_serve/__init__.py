"""scan-serve: the gRPC gateway in front of an exported model version.

Modules, by role:
* `proto/`    generated stubs of protos/scan/v1/scan.proto;
* `inputs`    request images -> model input (the training preprocessing), with the input rules;
* `backends`  embedded onnxruntime (with in-process batching) or a Triton server;
* `model`     a served version: metadata, prototype index, backend; cluster names;
* `metrics`   Prometheus metrics;
* `memory`    freed heap memory back to the system after large decodes;
* `settings`  `ServeSettings`: everything a gateway runs with, and the serving defaults;
* `gateway`   the served version and its switch without restart, names, health, the fine-tuning jobs;
* `servicer`  the RPCs (errors become status codes, malformed bytes INVALID_ARGUMENT);
* `auth`      the operator token check;
* `server`    `create_server` and `serve`: ports, health, reflection, start and stop;
* `store`, `jobs`, `finetune`, `finetune_options`   fine-tuning on stored images (the job runs in its own process);
* `client`    the Python client; `process` runs the gateway as a child process;
* `cli`       `scan-serve`.
"""
