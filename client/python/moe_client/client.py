"""RouterClient: Forward, GetModelInfo and health checks against moe-router."""

import asyncio
import concurrent.futures
import functools
import itertools
import os
import re
import threading
import time
from typing import Dict, List, Optional

import grpc
import numpy as np

from moe_client._generated.moe.v1 import router_pb2, router_pb2_grpc, tensor_pb2

try:  # built with the project where Python's headers are (python3-dev)
    from moe_client._generated import _transport
except ImportError:
    _transport = None

_MODES = {"eval": router_pb2.EVAL, "train": router_pb2.TRAIN}
_POLICIES = {"random": router_pb2.RANDOM, "all": router_pb2.ALL,
             "none": router_pb2.NONE, "threshold": router_pb2.THRESHOLD}
_ON_FAILURE = {None: router_pb2.ON_FAILURE_UNSPECIFIED,
               "drop": router_pb2.ON_FAILURE_DROP,
               "fail": router_pb2.ON_FAILURE_FAIL}


class MoeError(Exception):
    """A failed call: `code` is the grpc.StatusCode, `details` the server's
    message (it names the field for bad input), `request_id` the forward's
    request ID (the name the router's logs give it; None for other
    calls)."""

    def __init__(self, code: grpc.StatusCode, details: str,
                 request_id: Optional[str] = None):
        suffix = " [request %s]" % request_id if request_id else ""
        # The router's token gate names the request itself.
        if suffix and details.endswith(suffix):
            suffix = ""
        super().__init__("%s: %s%s" % (code.name, details, suffix))
        self.code = code
        self.details = details
        self.request_id = request_id


# A request ID a caller may choose: what the router takes from x-request-id.
_REQUEST_ID = re.compile(r"[A-Za-z0-9._\-:/+=]{1,128}\Z")


def _checked_request_id(request_id: str) -> str:
    if not isinstance(request_id, str) or not _REQUEST_ID.match(request_id):
        raise ValueError(
            "request_id %r: 1 to 128 characters of letters, digits and "
            ". _ - : / + =" % (request_id,))
    return request_id


def _bf16_bits(x: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 bit patterns (uint16), round to nearest even."""
    bits = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    rounding = ((bits >> 16) & 1) + 0x7FFF
    out = ((bits + rounding) >> 16).astype(np.uint16)
    nan = np.isnan(x)
    if nan.any():
        out[nan] = 0x7FC0
    return out


def _torch_of(x):
    """torch, when x is one of its tensors, else None (torch is imported
    only for callers that pass one)."""
    if type(x).__module__.partition(".")[0] != "torch":
        return None
    import torch
    return torch if isinstance(x, torch.Tensor) else None


# Wire dtype name: (moe.v1 code, little-endian numpy dtype; None: bfloat16).
_WIRE_DTYPES = {"float32": (tensor_pb2.FLOAT32, "<f4"),
                "float16": (tensor_pb2.FLOAT16, "<f2"),
                "bfloat16": (tensor_pb2.BFLOAT16, None),
                "int64": (tensor_pb2.INT64, "<i8")}


def _wire_dtype_of(torch, x) -> str:
    """The wire dtype a torch tensor travels as by default: its own
    (float32, bfloat16, float16), float32 for any other."""
    return {torch.bfloat16: "bfloat16",
            torch.float16: "float16"}.get(x.dtype, "float32")


def _tensor_bytes(x, dtype: str):
    """(shape, bytes) of x as a moe.v1.Tensor of `dtype` carries it. x: a
    numpy array (or anything np.asarray takes) or a torch tensor on any
    device; a bfloat16 tensor sent as bfloat16 goes bit for bit."""
    torch = _torch_of(x)
    if torch is not None:
        x = x.detach()
        if x.device.type != "cpu":
            x = x.cpu()
        if x.dtype == torch.bfloat16:
            if dtype == "bfloat16":
                bits = x.contiguous().view(torch.int16).numpy()
                return tuple(x.shape), bits.astype("<i2", copy=False).tobytes()
            x = x.float()  # numpy has no bfloat16; exact
        x = x.numpy()
    else:
        x = np.asarray(x)
    wire = _WIRE_DTYPES[dtype][1]
    if wire is None:
        return x.shape, _bf16_bits(x.astype(np.float32)).astype("<u2").tobytes()
    return x.shape, np.ascontiguousarray(x, dtype=wire).tobytes()


def encode_tensor(x, dtype: str = "float32") -> tensor_pb2.Tensor:
    """A numpy array (or torch tensor) as a moe.v1.Tensor of `dtype`
    (float32, float16, bfloat16; int64 for integer arrays)."""
    if dtype not in _WIRE_DTYPES:
        raise ValueError("dtype must be float32, float16, bfloat16 or int64, "
                         "not %r" % dtype)
    shape, data = _tensor_bytes(x, dtype)
    t = tensor_pb2.Tensor(dtype=_WIRE_DTYPES[dtype][0], data=data)
    t.shape.extend(int(d) for d in shape)
    return t


def _torch_options(x, options):
    """torch when x is a torch tensor (then options' dtype defaults to
    x's: _wire_dtype_of), else None."""
    torch = _torch_of(x)
    if torch is not None and "dtype" not in options:
        options["dtype"] = _wire_dtype_of(torch, x)
    return torch


def _like_x(torch, x, result):
    """result, its y a torch tensor of x's dtype (float32 when x's is not a
    floating one) on x's device when x is a torch tensor (torch not None)."""
    if torch is None:
        return result
    y = torch.from_numpy(result.y if result.y.flags.writeable else result.y.copy())
    dtype = x.dtype if x.dtype.is_floating_point else torch.float32
    if y.dtype != dtype or x.device.type != "cpu":
        y = y.to(device=x.device, dtype=dtype)
    result.y = y
    return result


_NUMPY_DTYPES = {tensor_pb2.FLOAT32: "<f4", tensor_pb2.FLOAT16: "<f2",
                 tensor_pb2.INT64: "<i8"}


def _array(dtype: int, shape, data) -> np.ndarray:
    """A tensor's dtype code, shape and bytes as a numpy array, a view of
    `data` (writable when `data` is a bytearray); bfloat16 as float32."""
    if dtype == tensor_pb2.BFLOAT16:
        a = (np.frombuffer(data, dtype="<u2").astype(np.uint32) << 16).view(np.float32)
    elif dtype in _NUMPY_DTYPES:
        a = np.frombuffer(data, dtype=_NUMPY_DTYPES[dtype])
    else:
        raise ValueError("unknown tensor dtype %d" % dtype)
    return a.reshape(shape)


def decode_tensor(t: tensor_pb2.Tensor) -> np.ndarray:
    """A moe.v1.Tensor as a writable numpy array of its own (bfloat16 comes
    back as float32), ready for torch.from_numpy."""
    a = _array(t.dtype, tuple(t.shape), t.data)
    if not a.flags.writeable:  # a view of the message's bytes
        a = a.copy()
    return a


_HEALTH_STATUS = {0: "UNKNOWN", 1: "SERVING", 2: "NOT_SERVING",
                  3: "SERVICE_UNKNOWN"}


def _health_request(service: str) -> bytes:
    """HealthCheckRequest{service = 1}."""
    name = service.encode()
    return (b"\x0a" + _varint(len(name)) + name) if name else b""


def _health_status(data: bytes) -> str:
    """HealthCheckResponse{status = 1 (enum)} -> its name."""
    status, i = 0, 0
    while i < len(data):
        tag, i = _read_varint(data, i)
        if tag == 0x08:
            status, i = _read_varint(data, i)
        elif tag & 7 == 2:
            n, i = _read_varint(data, i)
            i += n
        elif tag & 7 == 0:
            _, i = _read_varint(data, i)
        else:
            raise ValueError("unexpected health response")
    return _HEALTH_STATUS.get(status, str(status))


def _varint(v: int) -> bytes:
    out = bytearray()
    while v >= 0x80:
        out.append(v & 0x7F | 0x80)
        v >>= 7
    out.append(v)
    return bytes(out)


def _read_varint(data: bytes, i: int):
    v, shift = 0, 0
    while True:
        b = data[i]
        i += 1
        v |= (b & 0x7F) << shift
        if b < 0x80:
            return v, i
        shift += 7


_STATUS_CODES = {c.value[0]: c for c in grpc.StatusCode}


class _NativeRpcError(grpc.RpcError):
    """A failed call of the native transport, as grpcio raises one."""

    def __init__(self, code: int, details: str):
        super().__init__(details)
        self._code = _STATUS_CODES.get(code, grpc.StatusCode.UNKNOWN)
        self._details = details

    def code(self):
        return self._code

    def details(self):
        return self._details


def _native_unary(channel, method: str):
    """A unary method of a native channel, bytes in and out, called as
    grpcio's are."""
    def call(request: bytes, timeout=None, metadata=None):
        try:
            return channel.unary(method, request, timeout, metadata)
        except _transport.RpcError as e:
            raise _NativeRpcError(*e.args) from None
    return call


def native_transport_available() -> bool:
    """Whether this install has the native transport (RouterClient's
    transport="native"; built by the project's CMake with python3-dev)."""
    return _transport is not None


class _ForwardFuture:
    """The result of forward_async(): a grpcio call's future, or a
    concurrent.futures.Future of a native call."""

    def __init__(self, call, convert, request_id):
        self._call = call
        self._convert = convert
        self.request_id = request_id

    def done(self) -> bool:
        return self._call.done()

    def cancel(self) -> bool:
        """Cancels the call (a grpcio one at any time, a native one while
        it waits for a thread); True when it was."""
        return self._call.cancel()

    def add_done_callback(self, fn):
        """fn(self) once the call ends, on the thread that ends it (at
        once when it has ended)."""
        self._call.add_done_callback(lambda _: fn(self))

    def result(self, timeout: Optional[float] = None) -> "ForwardResult":
        """The ForwardResult; raises MoeError when the call failed and
        TimeoutError when it is still running after `timeout` seconds."""
        try:
            response = self._call.result(timeout=timeout)
        except grpc.RpcError as e:
            raise MoeError(e.code(), e.details() or "", self.request_id) from None
        except grpc.FutureTimeoutError:
            raise TimeoutError("the forward is still running") from None
        except (grpc.FutureCancelledError, concurrent.futures.CancelledError):
            # A native call still waiting for a thread when close() ran.
            raise MoeError(grpc.StatusCode.CANCELLED,
                           "the client was closed before the call ran",
                           self.request_id) from None
        return self._convert(response)


class ForwardResult:
    """One forward's answer.

    y: [batch, tokens, dim] float32 (numpy; for a torch x, a torch tensor
    of x's dtype on x's device); degraded: some experts were
    unavailable; losses: raw, weighted and total; failed_experts;
    kept_per_expert; stats: per-level kept/dropped counts
    (router_pb2.RoutingStats); trace: the routing tensors (trace=True);
    response: the ForwardResponse itself. y and degraded are read at once,
    the others from the response when first asked for (a decode step reads
    only y: each field read from a message costs a Python object); made
    from the response's bytes (from_bytes), the message itself is parsed
    only then.
    """

    request_id = None  # the call's x-request-id, set by the client

    def __init__(self, response: router_pb2.ForwardResponse):
        self.response = response
        self.y = decode_tensor(response.y)
        self.degraded = response.degraded

    @classmethod
    def from_bytes(cls, raw: bytes) -> "ForwardResult":
        """The result of a serialized ForwardResponse: y and degraded read
        straight from the bytes (the native module's reader), the message
        parsed when another field is asked for."""
        fields = _transport.forward_fields(raw) if _transport is not None else None
        if fields is None:  # no reader, or bytes only protobuf should read
            return cls(router_pb2.ForwardResponse.FromString(raw))
        result = cls.__new__(cls)
        result._raw = raw
        dtype, shape, data, result.degraded = fields
        result.y = _array(dtype, shape, data)
        return result

    def __getattr__(self, name):
        # Only for attributes not set: `response` of a result made from bytes.
        if name == "response" and "_raw" in self.__dict__:
            self.response = router_pb2.ForwardResponse.FromString(self._raw)
            return self.response
        raise AttributeError(name)

    @functools.cached_property
    def losses(self) -> Dict[str, float]:
        l = self.response.losses
        return {"balance_loss": l.balance_loss, "router_z_loss": l.router_z_loss,
                "weighted_balance_loss": l.weighted_balance_loss,
                "weighted_router_z_loss": l.weighted_router_z_loss,
                "total_aux_loss": l.total_aux_loss}

    @functools.cached_property
    def failed_experts(self) -> List[int]:
        return list(self.response.failed_experts)

    @functools.cached_property
    def kept_per_expert(self) -> List[int]:
        return list(self.response.stats.kept_per_expert)

    @property
    def stats(self) -> router_pb2.RoutingStats:
        return self.response.stats

    @functools.cached_property
    def trace(self) -> Dict[str, np.ndarray]:
        return {t.name: decode_tensor(t.tensor) for t in self.response.trace}

    def __repr__(self):
        return "ForwardResult(y=<%s %s>, degraded=%s, layer=%r)" % (
            "x".join(map(str, self.y.shape)), self.y.dtype, self.degraded,
            self.response.layer)


def _field_tag(message, name: str) -> bytes:
    """The tag of length-delimited field `name` of `message`'s type."""
    return _varint(message.DESCRIPTOR.fields_by_name[name].number << 3 | 2)


_X_TAG = _field_tag(router_pb2.ForwardRequest, "x")
_DATA_TAG = _field_tag(tensor_pb2.Tensor, "data")
# The dtypes x may travel as.
_TENSOR_DTYPES = ("float32", "float16", "bfloat16")
# Serialized requests without x, by their arguments, and Tensor headers
# (dtype and shape) by dtype and shape: forward() appends x's bytes to them
# (protobuf reads concatenated fields as one message) instead of building a
# message per call. Bounded: cleared when full.
_PREFIX_CACHE_SIZE = 256


class RouterClient:
    """A channel to one router. Thread-safe; reuse it.

    timeout: seconds per call, retries included. Calls that fail with
    UNAVAILABLE are retried (up to max_attempts) with a short backoff; so
    are calls the server cancelled (a server shutting down cancels calls it
    has not started), reported as UNAVAILABLE; other errors raise MoeError
    at once.

    TLS: give root_certificates (PEM bytes of the router's CA) and, for
    mutual TLS, private_key and certificate_chain; tls_server_name when the
    router's certificate names another host than the target's. token: sent
    as "authorization: Bearer <token>" (a router with tokens answers
    UNAUTHENTICATED without one, and hides its workers in model_info()).

    transport: how forward() calls. "native": through gRPC's C++ library
    (moe_client._generated._transport, built with the project), with the
    GIL released while it waits (Ctrl-C still cancels it): 70-100 us less
    per decode-sized forward than grpcio on a 2-core machine
    (BENCHMARKS.md); "grpcio": grpcio's channel; "auto" (default): native
    where it is built, else grpcio. forward() and forward_request() take
    the transport (forward_async on the client's own threads); model_info
    and health go through grpcio.
    Like grpcio's, the native channel does not survive fork(): make
    clients in the process that uses them.
    """

    def __init__(self, target: str, timeout: float = 60.0,
                 max_attempts: int = 3, max_message_bytes: int = 1 << 30,
                 root_certificates: Optional[bytes] = None,
                 private_key: Optional[bytes] = None,
                 certificate_chain: Optional[bytes] = None,
                 token: Optional[str] = None,
                 tls_server_name: Optional[str] = None,
                 transport: str = "auto"):
        if transport not in ("auto", "native", "grpcio"):
            raise ValueError("transport must be auto, native or grpcio, not %r"
                             % (transport,))
        if transport == "native" and _transport is None:
            raise ValueError(
                "transport=\"native\": moe_client._generated._transport is not "
                "built (it needs Python's headers, python3-dev, when the project "
                "is built); use transport=\"grpcio\"")
        bad = next((i for i, ch in enumerate(token or "")
                    if not " " <= ch <= "~"), None)
        if bad is not None:
            raise ValueError(
                "token: character %r at offset %d; a gRPC header carries "
                "printable ASCII only (a line end read with the token?)"
                % (token[bad], bad))
        self.target = target
        self.timeout = timeout
        self.max_attempts = max(1, max_attempts)
        self._metadata = (("authorization", "Bearer " + token),) if token else ()
        # Request IDs of this client: a random prefix, then a counter.
        self._request_ids = itertools.count()
        self._request_id_prefix = os.urandom(4).hex()
        options = [
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
        ]
        if tls_server_name:
            options.append(("grpc.ssl_target_name_override", tls_server_name))
        if root_certificates is not None or private_key is not None:
            credentials = grpc.ssl_channel_credentials(
                root_certificates=root_certificates, private_key=private_key,
                certificate_chain=certificate_chain)
            self._channel = grpc.secure_channel(target, credentials, options=options)
        else:
            self._channel = grpc.insecure_channel(target, options=options)
        self._router = router_pb2_grpc.RouterStub(self._channel)
        # Forward, bytes in and out (forward() makes the request and reads
        # the response itself).
        self._native = None
        if transport != "grpcio" and _transport is not None:
            self._native = _transport.Channel(
                target, root_certificates=root_certificates,
                private_key=private_key, certificate_chain=certificate_chain,
                tls_server_name=tls_server_name,
                max_message_bytes=max_message_bytes)
            self._forward_bytes = _native_unary(self._native, "/moe.v1.Router/Forward")
        else:
            self._forward_bytes = self._channel.unary_unary("/moe.v1.Router/Forward")
        self.transport = "native" if self._native is not None else "grpcio"
        self._async = None
        self._async_lock = threading.Lock()
        self._prefixes = {}
        self._tensor_heads = {}
        # grpc.health.v1.Health/Check, with its two one-field messages
        # encoded here (a generated "grpc" package would shadow grpcio's).
        self._health_check = self._channel.unary_unary(
            "/grpc.health.v1.Health/Check",
            request_serializer=_health_request,
            response_deserializer=_health_status)

    # Native forward_async calls run on these threads, each waiting for its
    # call with the GIL released; more calls at once wait for one.
    _ASYNC_THREADS = 16

    def _async_calls(self) -> concurrent.futures.ThreadPoolExecutor:
        with self._async_lock:
            if self._async is None:
                self._async = concurrent.futures.ThreadPoolExecutor(
                    max_workers=self._ASYNC_THREADS,
                    thread_name_prefix="moe-forward-async")
            return self._async

    def close(self):
        """Ends the client: calls still running on it end CANCELLED (on
        either transport, as closing a grpcio channel does)."""
        with self._async_lock:
            calls, self._async = self._async, None
        if calls is not None:
            calls.shutdown(wait=False, cancel_futures=True)
        if self._native is not None:
            self._native.close()
        self._channel.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _new_request_id(self, request_id: Optional[str]) -> str:
        if request_id is not None:
            return _checked_request_id(request_id)
        return "%s%08x" % (self._request_id_prefix,
                           next(self._request_ids) & 0xFFFFFFFF)

    def _metadata_with(self, request_id: Optional[str],
                       traceparent: Optional[str] = None):
        metadata = self._metadata
        if request_id is not None:
            metadata = metadata + (("x-request-id", request_id),)
        if traceparent:
            if not isinstance(traceparent, str) or not traceparent.isascii() \
                    or not traceparent.isprintable():
                raise ValueError("traceparent %r: a W3C traceparent value "
                                 "(00-TRACE-SPAN-FLAGS)" % (traceparent,))
            metadata = metadata + (("traceparent", traceparent),)
        return metadata

    def _call(self, method, request, timeout: Optional[float],
              request_id: Optional[str] = None,
              traceparent: Optional[str] = None):
        """One call with retries; `request_id` (a forward's) goes with every
        attempt as x-request-id and ends a MoeError's message; `traceparent`
        goes with every attempt."""
        metadata = self._metadata_with(request_id, traceparent)
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        for attempt in range(self.max_attempts):
            left = deadline - time.monotonic()
            if left <= 0:
                raise MoeError(grpc.StatusCode.DEADLINE_EXCEEDED,
                               "no time left for another attempt", request_id)
            try:
                return method(request, timeout=left, metadata=metadata)
            except grpc.RpcError as e:
                code, details = e.code(), e.details() or ""
                if code == grpc.StatusCode.CANCELLED:
                    # Never ours: a server shutting down cancels calls it
                    # has not started. A forward is safe to retry.
                    code = grpc.StatusCode.UNAVAILABLE
                    details = ("the server cancelled the call (a server shutting "
                               "down does this to calls it has not started; safe "
                               "to retry): " + details)
                if code == grpc.StatusCode.UNAVAILABLE and attempt + 1 < self.max_attempts:
                    time.sleep(min(0.1 * 2 ** attempt, max(0.0, deadline - time.monotonic())))
                    continue
                raise MoeError(code, details, request_id) from None
        raise AssertionError("unreachable")

    def forward_request(self, request: router_pb2.ForwardRequest,
                        timeout: Optional[float] = None,
                        request_id: Optional[str] = None) -> router_pb2.ForwardResponse:
        """Sends a ready-made ForwardRequest; returns the raw response.
        request_id: as forward()'s."""
        request_id = self._new_request_id(request_id)
        if self._native is not None:
            return router_pb2.ForwardResponse.FromString(
                self._call(self._forward_bytes, request.SerializeToString(),
                           timeout, request_id))
        return self._call(self._router.Forward, request, timeout, request_id)

    def make_request(self, x, *, layer: str = "", dtype: str = "float32",
                     mode: str = "eval", policy: str = "random",
                     threshold: Optional[float] = None,
                     capacity_factor: Optional[float] = None,
                     seed: Optional[int] = None, second_choice_uniforms=None,
                     trace: bool = False,
                     on_expert_failure: Optional[str] = None
                     ) -> router_pb2.ForwardRequest:
        """The ForwardRequest of forward()'s arguments."""
        if mode not in _MODES:
            raise ValueError("mode must be one of %s" % sorted(_MODES))
        if policy not in _POLICIES:
            raise ValueError("policy must be one of %s" % sorted(_POLICIES))
        if on_expert_failure not in _ON_FAILURE:
            raise ValueError("on_expert_failure must be drop, fail or None")
        request = router_pb2.ForwardRequest()
        request.x.CopyFrom(encode_tensor(x, dtype))
        request.layer = layer
        request.on_expert_failure = _ON_FAILURE[on_expert_failure]
        o = request.options
        o.mode = _MODES[mode]
        o.policy = _POLICIES[policy]
        if threshold is not None:
            o.threshold = threshold
        if capacity_factor is not None:
            o.capacity_factor = capacity_factor
        if seed is not None:
            o.seed = seed
        if second_choice_uniforms is not None:
            o.second_choice_uniforms.CopyFrom(encode_tensor(second_choice_uniforms))
        o.return_trace = trace
        return request

    def request_bytes(self, x, *, dtype: str = "float32", **options) -> bytes:
        """The serialized ForwardRequest of forward()'s arguments (options:
        make_request's), the message make_request(...).SerializeToString()
        gives, possibly with its fields in another order, from cached parts:
        the request without x per set of options, the Tensor header per
        dtype and shape."""
        if dtype not in _TENSOR_DTYPES:
            return self.make_request(x, dtype=dtype, **options).SerializeToString()
        key, prefix = None, None
        if options.get("second_choice_uniforms") is None:
            try:
                key = tuple(sorted(options.items()))
                prefix = self._prefixes.get(key)
            except TypeError:  # an unhashable value: not cached
                key = None
        if prefix is None:
            request = self.make_request(x, dtype=dtype, **options)  # checks them
            request.ClearField("x")
            prefix = request.SerializeToString()
            if key is not None:
                if len(self._prefixes) >= _PREFIX_CACHE_SIZE:
                    self._prefixes.clear()
                self._prefixes[key] = prefix
        shape, data = _tensor_bytes(x, dtype)
        head = self._tensor_heads.get((dtype, shape))
        if head is None:
            head = tensor_pb2.Tensor(
                dtype=_WIRE_DTYPES[dtype][0],
                shape=[int(d) for d in shape]).SerializeToString()
            if len(self._tensor_heads) >= _PREFIX_CACHE_SIZE:
                self._tensor_heads.clear()
            self._tensor_heads[(dtype, shape)] = head
        tensor = b"".join((head, _DATA_TAG, _varint(len(data)), data))
        return b"".join((prefix, _X_TAG, _varint(len(tensor)), tensor))

    @staticmethod
    def _checked(result: ForwardResult, allow_degraded: bool,
                 request_id: str) -> ForwardResult:
        result.request_id = request_id
        if result.degraded and not allow_degraded:
            r = result.response
            raise MoeError(
                grpc.StatusCode.UNAVAILABLE,
                "degraded answer: experts %s of layer %r were unavailable "
                "(%d assignments dropped); pass allow_degraded=True to accept it"
                % (list(r.failed_experts), r.layer,
                   r.stats.dropped_expert_unavailable), request_id)
        return result

    def forward(self, x, *, layer: str = "", allow_degraded: bool = False,
                timeout: Optional[float] = None,
                request_id: Optional[str] = None,
                traceparent: Optional[str] = None, **options) -> ForwardResult:
        """One forward of x ([batch, tokens, dim]) through `layer` (may be
        empty for a one-layer model). x: a numpy array, or a torch tensor
        on any device: then it travels in its own dtype (bfloat16 bit for
        bit, float16, float32; other dtypes as float32) unless `dtype` says
        otherwise, and the result's y is a torch tensor of x's dtype on x's
        device.

        options: dtype (how x travels: float32, float16, bfloat16),
        mode (eval | train: the thresholds and capacity factors of that mode),
        policy (random | all | none | threshold: the second-expert policy),
        threshold and capacity_factor (per-request overrides), seed (the
        random policy's draws), second_choice_uniforms (explicit draws
        [B, n] or [2, B, n] to replay the reference), trace (return the
        routing tensors), on_expert_failure (drop | fail, overriding the
        router's). An answer missing some experts' outputs raises MoeError
        (UNAVAILABLE) unless allow_degraded.

        request_id: sent as x-request-id (every attempt), the name the
        router's logs give the call; default: a new one. It is the
        result's request_id and ends a MoeError's message.

        traceparent: the caller's W3C trace context ("00-TRACE-SPAN-01"),
        sent as is: a router that traces records the call in that trace
        when it is sampled (docs/operations.md, "Traces"); with
        OpenTelemetry's API, propagate.inject(carrier) gives it.
        """
        request_id = self._new_request_id(request_id)
        torch = _torch_options(x, options)
        request = self.request_bytes(x, layer=layer, **options)
        raw = self._call(self._forward_bytes, request, timeout, request_id,
                         traceparent)
        return _like_x(torch, x, self._checked(ForwardResult.from_bytes(raw),
                                               allow_degraded, request_id))

    def forward_async(self, x, *, layer: str = "", allow_degraded: bool = False,
                      timeout: Optional[float] = None,
                      request_id: Optional[str] = None,
                      traceparent: Optional[str] = None, **options):
        """forward() without waiting: returns a future whose result() is the
        ForwardResult (or raises MoeError). No retries. On the native
        transport the call waits on one of 16 threads of the client (with
        the GIL released); more calls at once wait for a thread, and a call
        still running when the interpreter exits holds the exit until it
        ends (close() the client to end it at once). request_id and
        traceparent: as forward()'s."""
        request_id = self._new_request_id(request_id)
        metadata = self._metadata_with(request_id, traceparent)
        torch = _torch_options(x, options)
        if self._native is not None:
            request = self.request_bytes(x, layer=layer, **options)
            call = self._async_calls().submit(
                self._forward_bytes, request,
                timeout=self.timeout if timeout is None else timeout,
                metadata=metadata)
            return _ForwardFuture(
                call, lambda raw: _like_x(torch, x, self._checked(
                    ForwardResult.from_bytes(raw), allow_degraded, request_id)),
                request_id)
        request = self.make_request(x, layer=layer, **options)
        call = self._router.Forward.future(
            request, timeout=self.timeout if timeout is None else timeout,
            metadata=metadata)
        return _ForwardFuture(
            call, lambda r: _like_x(torch, x, self._checked(
                ForwardResult(r), allow_degraded, request_id)),
            request_id)

    async def forward_aio(self, x, **kwargs) -> ForwardResult:
        """forward() for asyncio: the call runs as forward_async's does and
        the coroutine awaits it without holding the event loop; the
        arguments are forward()'s, and so is the result or the MoeError
        raised (no retries, as forward_async). Cancelling the awaiting task
        cancels a grpcio call; a native call already running ends on its
        own and its answer is dropped."""
        loop = asyncio.get_running_loop()
        call = self.forward_async(x, **kwargs)
        waiter = loop.create_future()

        def settle():
            if waiter.cancelled():
                return
            try:
                waiter.set_result(call.result())
            except Exception as e:  # MoeError, TimeoutError
                waiter.set_exception(e)

        def ended(_):
            try:
                loop.call_soon_threadsafe(settle)
            except RuntimeError:  # the loop closed meanwhile
                pass

        call.add_done_callback(ended)
        try:
            return await waiter
        except asyncio.CancelledError:
            call.cancel()
            raise

    def model_info(self, timeout: Optional[float] = None) -> router_pb2.ModelInfo:
        """The served model, limits and workers (GetModelInfo)."""
        return self._call(self._router.GetModelInfo, router_pb2.GetModelInfoRequest(),
                          timeout)

    def health(self, service: str = "moe.v1.Router", timeout: float = 5.0) -> str:
        """grpc.health.v1 status name of `service` ("" for the process):
        SERVING once every expert has a healthy worker, NOT_SERVING while
        starting or draining."""
        return self._call(self._health_check, service, timeout)
