"""Python client of the moe-serve router (moe.v1.Router over gRPC).

    from moe_client import RouterClient
    with RouterClient("127.0.0.1:50051") as client:
        result = client.forward(x, layer="blocks.3.ff")  # x: numpy or torch [B, n, dim]
        print(result.y.shape, result.losses["balance_loss"], result.degraded)

The generated moe.v1 protobuf modules come from the build: `./moe build`
writes them into moe_client/_generated, so PYTHONPATH=client/python is all
it takes; `./moe python-wheel DIR` makes wheels of it for pip.
Uses grpcio, protobuf and numpy (Debian's python3-grpcio, python3-protobuf
and python3-numpy).
"""

from moe_client._generated.version import __version__
from moe_client.client import (ForwardResult, MoeError, RouterClient,
                               decode_tensor, encode_tensor,
                               native_transport_available)

__all__ = ["RouterClient", "ForwardResult", "MoeError", "encode_tensor",
           "decode_tensor", "native_transport_available", "__version__"]
