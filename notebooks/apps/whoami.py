"""A tiny deployment whose replicas say who they are: used to watch Serve's actors at work.

Run it with ``serve run apps.whoami:app`` from ``notebooks/``, or ``serve.run(app)``.
"""

# No `from __future__ import annotations`: FastAPI reads the route's annotations at run time.
import os

import ray
from fastapi import FastAPI
from ray import serve

api = FastAPI(title="Who am I")


@serve.deployment(
    num_replicas=2,
    # Each replica reserves a tenth of a CPU, so a 2-core laptop can hold many of them.
    ray_actor_options={"num_cpus": 0.1},
)
@serve.ingress(api)
class WhoAmI:
    def __init__(self) -> None:
        context = serve.get_replica_context()
        self.replica = context.replica_id.unique_id  # random, unique per replica
        self.pid = os.getpid()
        self.node = ray.util.get_node_ip_address()  # the address of the node it runs on

    @api.get("/")
    async def who(self) -> dict:
        # Serve's request context is not public API in Ray 2.60 (a leading underscore): it
        # may change in a later release. It gives the id Serve's logs use for this request.
        request_id = serve.context._get_serve_request_context().request_id
        return {"replica": self.replica, "pid": self.pid, "node": self.node, "request_id": request_id}


app = WhoAmI.bind()
