// moe_client._generated._transport: unary gRPC calls of ready-made request
// bytes through gRPC's C++ library, for the Python client's hot path
// (RouterClient.forward): the C++ client's kind of call on a shared channel,
// with the GIL released while it waits. A decode-sized forward through
// grpcio cost the Python process 245-320 us of CPU on a 2-core machine,
// through this 180-245 (BENCHMARKS.md). Only bytes cross: the Python client
// builds the request and parses the response as before, so nothing of
// protobuf is linked here (no second copy of the moe.v1 descriptors in the
// process).
//
//   ch = _transport.Channel(target, root_certificates=None, private_key=None,
//                           certificate_chain=None, tls_server_name=None,
//                           max_message_bytes=1 << 30)
//   ch.unary("/moe.v1.Router/Forward", request_bytes, timeout_seconds,
//            (("authorization", "Bearer t"),))  -> response bytes
//   ch.close()
// A failed call raises _transport.RpcError(code: int, details: str), code
// being grpc.StatusCode's number.
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "grpcpp/client_context.h"
#include "grpcpp/completion_queue.h"
#include "grpcpp/create_channel.h"
#include "grpcpp/generic/generic_stub.h"
#include "grpcpp/security/credentials.h"
#include "grpcpp/support/byte_buffer.h"
#include "grpcpp/support/channel_arguments.h"

namespace {

PyObject* g_rpc_error = nullptr;  // _transport.RpcError

// How often a waiting call lets Python's signal handlers run.
constexpr std::chrono::milliseconds kSignalCheck(100);

// A channel and its generic stub (both thread-safe).
struct Connection {
  std::shared_ptr<grpc::Channel> channel;
  std::unique_ptr<grpc::GenericStub> stub;
  // Set by close(): calls in flight are cancelled at their next slice, as
  // closing a grpcio channel ends the calls active on it.
  std::atomic<bool> closed{false};
};

struct ChannelObject {
  PyObject_HEAD std::shared_ptr<Connection>* connection;  // null once closed
};

// Releases a Py_buffer taken with "y*" when it goes out of scope.
struct BufferRelease {
  Py_buffer* buffer;
  ~BufferRelease() { PyBuffer_Release(buffer); }
};

// Bytes or None -> std::string; false with a TypeError otherwise.
bool OptionalBytes(PyObject* o, const char* name, std::string* out) {
  if (o == nullptr || o == Py_None) return true;
  char* data = nullptr;
  Py_ssize_t size = 0;
  if (PyBytes_AsStringAndSize(o, &data, &size) != 0) {
    PyErr_Format(PyExc_TypeError, "%s must be bytes or None", name);
    return false;
  }
  out->assign(data, static_cast<size_t>(size));
  return true;
}

int ChannelInit(ChannelObject* self, PyObject* args, PyObject* kwargs) {
  static const char* kwlist[] = {"target",
                                 "root_certificates",
                                 "private_key",
                                 "certificate_chain",
                                 "tls_server_name",
                                 "max_message_bytes",
                                 nullptr};
  const char* target = nullptr;
  PyObject* root = nullptr;
  PyObject* key = nullptr;
  PyObject* chain = nullptr;
  const char* server_name = nullptr;
  int max_message_bytes = 1 << 30;
  if (!PyArg_ParseTupleAndKeywords(
          args, kwargs, "s|OOOzi", const_cast<char**>(kwlist), &target, &root,
          &key, &chain, &server_name, &max_message_bytes)) {
    return -1;
  }
  grpc::SslCredentialsOptions ssl;
  if (!OptionalBytes(root, "root_certificates", &ssl.pem_root_certs) ||
      !OptionalBytes(key, "private_key", &ssl.pem_private_key) ||
      !OptionalBytes(chain, "certificate_chain", &ssl.pem_cert_chain)) {
    return -1;
  }
  const bool tls = (root != nullptr && root != Py_None) ||
                   (key != nullptr && key != Py_None);
  // As client/router_client.cc's channel: the message limits both ways,
  // gRPC's own retries off (the client retries UNAVAILABLE itself).
  grpc::ChannelArguments channel_args;
  channel_args.SetMaxReceiveMessageSize(max_message_bytes);
  channel_args.SetMaxSendMessageSize(max_message_bytes);
  channel_args.SetInt(GRPC_ARG_ENABLE_RETRIES, 0);
  if (server_name != nullptr && server_name[0] != '\0') {
    channel_args.SetSslTargetNameOverride(server_name);
  }
  auto connection = std::make_shared<Connection>();
  connection->channel = grpc::CreateCustomChannel(
      target,
      tls ? grpc::SslCredentials(ssl) : grpc::InsecureChannelCredentials(),
      channel_args);
  connection->stub = std::make_unique<grpc::GenericStub>(connection->channel);
  delete self->connection;
  self->connection = new std::shared_ptr<Connection>(std::move(connection));
  return 0;
}

void ChannelDealloc(ChannelObject* self) {
  delete self->connection;
  PyTypeObject* type = Py_TYPE(self);
  type->tp_free(reinterpret_cast<PyObject*>(self));
  Py_DECREF(type);  // a heap type: each instance holds a reference
}

// Whether gRPC takes (key, value) as metadata; gRPC's C++ library aborts
// the process on metadata it refuses, grpcio raises ValueError (as here).
bool ValidMetadata(const std::string& key, const std::string& value) {
  if (key.empty()) return false;
  for (const char c : key) {
    if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' ||
          c == '_' || c == '.')) {
      return false;
    }
  }
  if (key.size() >= 4 && key.compare(key.size() - 4, 4, "-bin") == 0) {
    return true;  // binary values: any bytes
  }
  for (const char c : value) {
    const auto u = static_cast<unsigned char>(c);
    if (u < 0x20 || u > 0x7e) return false;
  }
  return true;
}

PyObject* RaiseRpcError(int code, const std::string& details) {
  PyObject* value = Py_BuildValue("(is#)", code, details.data(),
                                  static_cast<Py_ssize_t>(details.size()));
  if (value != nullptr) {
    PyErr_SetObject(g_rpc_error, value);
    Py_DECREF(value);
  }
  return nullptr;
}

// The response's bytes as one Python bytes object.
PyObject* ToBytes(const grpc::ByteBuffer& buffer) {
  grpc::Slice single;
  if (buffer.TrySingleSlice(&single).ok()) {
    return PyBytes_FromStringAndSize(
        reinterpret_cast<const char*>(single.begin()),
        static_cast<Py_ssize_t>(single.size()));
  }
  std::vector<grpc::Slice> slices;
  if (!buffer.Dump(&slices).ok()) {
    return RaiseRpcError(13, "unreadable response buffer");
  }
  PyObject* out = PyBytes_FromStringAndSize(
      nullptr, static_cast<Py_ssize_t>(buffer.Length()));
  if (out == nullptr) return nullptr;
  char* at = PyBytes_AS_STRING(out);
  for (const grpc::Slice& s : slices) {
    std::copy(s.begin(), s.end(), at);
    at += s.size();
  }
  return out;
}

PyObject* ChannelUnary(ChannelObject* self, PyObject* args) {
  const char* method = nullptr;
  Py_buffer request;
  PyObject* timeout = nullptr;
  PyObject* metadata = nullptr;
  if (!PyArg_ParseTuple(args, "sy*|OO", &method, &request, &timeout,
                        &metadata)) {
    return nullptr;
  }
  const BufferRelease release{&request};
  if (self->connection == nullptr) {
    PyErr_SetString(PyExc_ValueError, "the channel is closed");
    return nullptr;
  }
  std::shared_ptr<Connection> connection = *self->connection;
  grpc::ClientContext context;
  if (timeout != nullptr && timeout != Py_None) {
    const double seconds = PyFloat_AsDouble(timeout);
    if (seconds == -1.0 && PyErr_Occurred()) return nullptr;
    // Past a century (inf included) no deadline, as timeout=None.
    if (!(seconds > 3.2e9)) {
      context.set_deadline(
          std::chrono::system_clock::now() +
          std::chrono::duration_cast<std::chrono::system_clock::duration>(
              std::chrono::duration<double>(seconds > 0 ? seconds : 0)));
    }
  }
  if (metadata != nullptr && metadata != Py_None) {
    PyObject* items = PySequence_Fast(metadata, "metadata must be a sequence");
    if (items == nullptr) return nullptr;
    for (Py_ssize_t i = 0; i < PySequence_Fast_GET_SIZE(items); ++i) {
      const char* k = nullptr;
      const char* v = nullptr;
      if (!PyArg_ParseTuple(PySequence_Fast_GET_ITEM(items, i), "ss", &k, &v)) {
        Py_DECREF(items);
        return nullptr;
      }
      if (!ValidMetadata(k, v)) {
        PyErr_Format(PyExc_ValueError, "metadata was invalid: (%R, %R)",
                     PyTuple_GET_ITEM(PySequence_Fast_GET_ITEM(items, i), 0),
                     PyTuple_GET_ITEM(PySequence_Fast_GET_ITEM(items, i), 1));
        Py_DECREF(items);
        return nullptr;
      }
      context.AddMetadata(k, v);
    }
    Py_DECREF(items);
  }
  grpc::Slice slice(request.buf, static_cast<size_t>(request.len));
  grpc::ByteBuffer send(&slice, 1);
  grpc::ByteBuffer received;
  grpc::Status status;
  // The call completes on a queue of its own (as gRPC's blocking unary
  // call does), waited on without the GIL in slices of kSignalCheck, so
  // that Ctrl-C (a Python signal handler raising) cancels it, as it does a
  // grpcio call.
  grpc::CompletionQueue cq;
  auto call = connection->stub->PrepareUnaryCall(&context, method, send, &cq);
  call->StartCall();
  call->Finish(&received, &status, &cq);
  void* tag = nullptr;
  bool ok = false;
  bool interrupted = false;
  bool closed = false;
  for (;;) {
    grpc::CompletionQueue::NextStatus next;
    Py_BEGIN_ALLOW_THREADS;
    next = cq.AsyncNext(&tag, &ok,
                        std::chrono::system_clock::now() + kSignalCheck);
    Py_END_ALLOW_THREADS;
    if (next != grpc::CompletionQueue::TIMEOUT) break;
    closed = connection->closed.load(std::memory_order_relaxed);
    if (closed || PyErr_CheckSignals() != 0) {
      interrupted = !closed;
      context.TryCancel();
      Py_BEGIN_ALLOW_THREADS;
      cq.Next(&tag, &ok);  // the cancelled call's Finish
      Py_END_ALLOW_THREADS;
      break;
    }
  }
  cq.Shutdown();
  while (cq.Next(&tag, &ok)) {
  }
  if (interrupted) return nullptr;  // the handler's exception
  if (closed && !status.ok()) {
    return RaiseRpcError(static_cast<int>(grpc::StatusCode::CANCELLED),
                         "the channel was closed while the call waited");
  }
  if (!status.ok()) {
    return RaiseRpcError(static_cast<int>(status.error_code()),
                         status.error_message());
  }
  return ToBytes(received);
}

PyObject* ChannelClose(ChannelObject* self, PyObject*) {
  if (self->connection == nullptr) Py_RETURN_NONE;
  (*self->connection)->closed = true;
  delete self->connection;  // calls in flight hold their own reference
  self->connection = nullptr;
  Py_RETURN_NONE;
}

// --- Reading y and degraded from a ForwardResponse's bytes ---------------
// (proto/moe/v1/router.proto: ForwardResponse.y = 1, degraded = 5;
// tensor.proto: Tensor.dtype = 1, shape = 2, data = 3), so that a decode
// step does not build a protobuf message; the rest of the response is
// parsed only when asked for.

bool ReadVarint(const uint8_t*& p, const uint8_t* end, uint64_t* v) {
  *v = 0;
  for (int shift = 0; shift < 64 && p < end; shift += 7) {
    const uint8_t b = *p++;
    *v |= static_cast<uint64_t>(b & 0x7F) << shift;
    if (b < 0x80) return true;
  }
  return false;
}

// A length-delimited field's payload: [*begin, *end).
bool ReadBytes(const uint8_t*& p, const uint8_t* end, const uint8_t** begin,
               const uint8_t** stop) {
  uint64_t n = 0;
  if (!ReadVarint(p, end, &n) || n > static_cast<uint64_t>(end - p)) {
    return false;
  }
  *begin = p;
  *stop = p + n;
  p += n;
  return true;
}

// Steps over a field of wire type `type` whose tag was read; false when
// malformed or a group (not in proto3).
bool SkipField(int type, const uint8_t*& p, const uint8_t* end) {
  uint64_t v = 0;
  switch (type) {
    case 0:
      return ReadVarint(p, end, &v);
    case 1:
      if (end - p < 8) return false;
      p += 8;
      return true;
    case 2: {
      const uint8_t* payload = nullptr;
      const uint8_t* payload_end = nullptr;
      return ReadBytes(p, end, &payload, &payload_end);
    }
    case 5:
      if (end - p < 4) return false;
      p += 4;
      return true;
    default:
      return false;
  }
}

PyObject* ForwardFields(PyObject*, PyObject* args) {
  Py_buffer raw;
  if (!PyArg_ParseTuple(args, "y*", &raw)) return nullptr;
  const BufferRelease release{&raw};
  const auto* p = static_cast<const uint8_t*>(raw.buf);
  const uint8_t* end = p + raw.len;
  const uint8_t* y = nullptr;
  const uint8_t* y_end = nullptr;
  bool degraded = false;
  while (p < end) {
    uint64_t tag = 0;
    if (!ReadVarint(p, end, &tag)) Py_RETURN_NONE;
    const int number = static_cast<int>(tag >> 3);
    const int type = static_cast<int>(tag & 7);
    if (number == 1 && type == 2) {
      // A second y would merge into the first: left to protobuf.
      if (y != nullptr || !ReadBytes(p, end, &y, &y_end)) Py_RETURN_NONE;
    } else if (number == 5 && type == 0) {
      uint64_t v = 0;
      if (!ReadVarint(p, end, &v)) Py_RETURN_NONE;
      degraded = v != 0;
    } else if (!SkipField(type, p, end)) {
      Py_RETURN_NONE;
    }
  }
  uint64_t dtype = 0;
  std::vector<uint64_t> shape;
  const uint8_t* data = nullptr;
  const uint8_t* data_end = nullptr;
  for (p = y; p != nullptr && p < y_end;) {
    uint64_t tag = 0;
    if (!ReadVarint(p, y_end, &tag)) Py_RETURN_NONE;
    const int number = static_cast<int>(tag >> 3);
    const int type = static_cast<int>(tag & 7);
    uint64_t v = 0;
    if (number == 1 && type == 0) {
      if (!ReadVarint(p, y_end, &dtype)) Py_RETURN_NONE;
    } else if (number == 2 && type == 0) {
      if (!ReadVarint(p, y_end, &v)) Py_RETURN_NONE;
      shape.push_back(v);
    } else if (number == 2 && type == 2) {
      const uint8_t* packed = nullptr;
      const uint8_t* packed_end = nullptr;
      if (!ReadBytes(p, y_end, &packed, &packed_end)) Py_RETURN_NONE;
      while (packed < packed_end) {
        if (!ReadVarint(packed, packed_end, &v)) Py_RETURN_NONE;
        shape.push_back(v);
      }
    } else if (number == 3 && type == 2) {
      if (!ReadBytes(p, y_end, &data, &data_end)) Py_RETURN_NONE;
    } else if (!SkipField(type, p, y_end)) {
      Py_RETURN_NONE;
    }
  }
  PyObject* dims = PyTuple_New(static_cast<Py_ssize_t>(shape.size()));
  if (dims == nullptr) return nullptr;
  for (size_t i = 0; i < shape.size(); ++i) {
    PyTuple_SET_ITEM(dims, static_cast<Py_ssize_t>(i),
                     PyLong_FromUnsignedLongLong(shape[i]));
  }
  // A bytearray: numpy views it writable, with no further copy.
  PyObject* bytes = PyByteArray_FromStringAndSize(
      reinterpret_cast<const char*>(data),
      data == nullptr ? 0 : static_cast<Py_ssize_t>(data_end - data));
  if (bytes == nullptr) {
    Py_DECREF(dims);
    return nullptr;
  }
  return Py_BuildValue("(KNNO)", static_cast<unsigned long long>(dtype), dims,
                       bytes, degraded ? Py_True : Py_False);
}

PyMethodDef kModuleMethods[] = {
    {"forward_fields", ForwardFields, METH_VARARGS,
     "forward_fields(response: bytes) -> (y_dtype, y_shape, y_data: "
     "bytearray, degraded) of a serialized ForwardResponse, or None when "
     "the bytes hold something only protobuf should read (a repeated y, "
     "malformed fields)."},
    {nullptr, nullptr, 0, nullptr}};

PyMethodDef kChannelMethods[] = {
    {"unary", reinterpret_cast<PyCFunction>(ChannelUnary), METH_VARARGS,
     "unary(method, request: bytes, timeout: float | None = None, "
     "metadata: tuple | None = None) -> bytes: one blocking unary call "
     "(the GIL released while it waits; a Python signal handler that "
     "raises cancels it); RpcError(code, details) when it fails."},
    {"close", reinterpret_cast<PyCFunction>(ChannelClose), METH_NOARGS,
     "close(): no more calls; calls in flight end CANCELLED within 0.1 s."},
    {nullptr, nullptr, 0, nullptr}};

PyType_Slot kChannelSlots[] = {
    {Py_tp_doc, const_cast<char*>(
                    "Channel(target, root_certificates=None, private_key=None, "
                    "certificate_chain=None, tls_server_name=None, "
                    "max_message_bytes=1 << 30): a channel of gRPC's C++ "
                    "library.")},
    {Py_tp_new, reinterpret_cast<void*>(PyType_GenericNew)},
    {Py_tp_init, reinterpret_cast<void*>(ChannelInit)},
    {Py_tp_dealloc, reinterpret_cast<void*>(ChannelDealloc)},
    {Py_tp_methods, kChannelMethods},
    {0, nullptr}};

PyType_Spec kChannelSpec = {"moe_client._generated._transport.Channel",
                            sizeof(ChannelObject), 0, Py_TPFLAGS_DEFAULT,
                            kChannelSlots};

PyModuleDef kModule = {PyModuleDef_HEAD_INIT,
                       "_transport",
                       "Unary gRPC calls of request bytes through gRPC's C++ "
                       "library (moe_client's forward path).",
                       -1,
                       kModuleMethods,
                       nullptr,
                       nullptr,
                       nullptr,
                       nullptr};

}  // namespace

PyMODINIT_FUNC PyInit__transport() {
  PyObject* module = PyModule_Create(&kModule);
  if (module == nullptr) return nullptr;
  PyObject* channel = PyType_FromSpec(&kChannelSpec);
  g_rpc_error = PyErr_NewExceptionWithDoc(
      "moe_client._generated._transport.RpcError",
      "A failed call: args are (code, details), code being "
      "grpc.StatusCode's number.",
      nullptr, nullptr);
  if (channel == nullptr || g_rpc_error == nullptr ||
      PyModule_AddObject(module, "Channel", channel) < 0) {
    Py_XDECREF(channel);
    Py_DECREF(module);
    return nullptr;
  }
  Py_INCREF(g_rpc_error);  // one for g_rpc_error, one for the module
  if (PyModule_AddObject(module, "RpcError", g_rpc_error) < 0) {
    Py_DECREF(g_rpc_error);
    Py_DECREF(module);
    return nullptr;
  }
  return module;
}
