"""``edgetl-rt serve``: the bundle as a long-running service speaking the Open Inference Protocol (KServe v2 REST).

One job per module: :mod:`.protocol` (the OIP JSON and binary-tensor encoding), :mod:`.requests` (a request
checked against what the model accepts), :mod:`.batcher` (dynamic
batching in front of the backbone), :mod:`.live_head` (the committed head version, picked up without a restart),
:mod:`.metrics` (Prometheus text), :mod:`.service` (the model behind the routes, no HTTP) and :mod:`.http` (the
routes, limits, tokens and draining).  Standard library only, so the service installs wherever the runtime does.
"""
