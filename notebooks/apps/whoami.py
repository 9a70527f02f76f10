"""A tiny deployment whose replicas say who they are: used to watch Serve's actors at work.

Run it with ``serve run apps.whoami:app`` from ``notebooks/``, or ``serve.run(app)``.
"""

import os

from ray import serve
from starlette.requests import Request


@serve.deployment(
    num_replicas=2,
    # Each replica reserves a tenth of a CPU, so a 2-core laptop can hold many of them.
    ray_actor_options={"num_cpus": 0.1},
)
class WhoAmI:
    def __init__(self) -> None:
        context = serve.get_replica_context()
        self.replica = context.replica_id.unique_id  # random, unique per replica
        self.pid = os.getpid()

    async def __call__(self, request: Request) -> dict:
        request_id = serve.context._get_serve_request_context().request_id
        return {"replica": self.replica, "pid": self.pid, "request_id": request_id}


app = WhoAmI.bind()
