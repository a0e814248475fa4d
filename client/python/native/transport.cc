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

#include <chrono>
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
};

struct ChannelObject {
  PyObject_HEAD std::shared_ptr<Connection>* connection;  // null once closed
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
  static const char* kwlist[] = {"target",          "root_certificates",
                                 "private_key",     "certificate_chain",
                                 "tls_server_name", "max_message_bytes",
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
  PyObject* out =
      PyBytes_FromStringAndSize(nullptr, static_cast<Py_ssize_t>(buffer.Length()));
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
  struct Release {
    Py_buffer* b;
    ~Release() { PyBuffer_Release(b); }
  } release{&request};
  if (self->connection == nullptr) {
    PyErr_SetString(PyExc_ValueError, "the channel is closed");
    return nullptr;
  }
  std::shared_ptr<Connection> connection = *self->connection;
  grpc::ClientContext context;
  if (timeout != nullptr && timeout != Py_None) {
    const double seconds = PyFloat_AsDouble(timeout);
    if (seconds == -1.0 && PyErr_Occurred()) return nullptr;
    context.set_deadline(
        std::chrono::system_clock::now() +
        std::chrono::duration_cast<std::chrono::system_clock::duration>(
            std::chrono::duration<double>(seconds > 0 ? seconds : 0)));
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
  for (;;) {
    grpc::CompletionQueue::NextStatus next;
    Py_BEGIN_ALLOW_THREADS;
    next = cq.AsyncNext(&tag, &ok,
                        std::chrono::system_clock::now() + kSignalCheck);
    Py_END_ALLOW_THREADS;
    if (next != grpc::CompletionQueue::TIMEOUT) break;
    if (PyErr_CheckSignals() != 0) {
      interrupted = true;
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
  if (!status.ok()) {
    return RaiseRpcError(static_cast<int>(status.error_code()),
                         status.error_message());
  }
  return ToBytes(received);
}

PyObject* ChannelClose(ChannelObject* self, PyObject*) {
  delete self->connection;  // calls in flight hold their own reference
  self->connection = nullptr;
  Py_RETURN_NONE;
}

PyMethodDef kChannelMethods[] = {
    {"unary", reinterpret_cast<PyCFunction>(ChannelUnary), METH_VARARGS,
     "unary(method, request: bytes, timeout: float | None = None, "
     "metadata: tuple | None = None) -> bytes: one blocking unary call "
     "(the GIL released while it waits; a Python signal handler that "
     "raises cancels it); RpcError(code, details) when it fails."},
    {"close", reinterpret_cast<PyCFunction>(ChannelClose), METH_NOARGS,
     "close(): no more calls (calls in flight finish)."},
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
                       nullptr,
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
