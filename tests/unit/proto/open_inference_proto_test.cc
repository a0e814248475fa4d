// proto/inference/open_inference_grpc.proto against the Open Inference
// Protocol's specification (kserve/open-inference-protocol,
// specification/protocol/open_inference_grpc.proto): a stock client
// (tritonclient, KServe) depends on every name, number and type below, so
// they are transcribed from the specification (and, for RepositoryIndex,
// from Triton's and MLServer's declaration of it in the same service; for
// ModelStatistics, from Triton's, less its memory_usage and response_stats
// fields; for ModelConfig, Triton's fields that describe these models) and
// compared with the compiled descriptors, nothing more and nothing less.
#include <google/protobuf/descriptor.h>
#include <google/protobuf/descriptor.pb.h>
#include <gtest/gtest.h>

#include <map>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "inference/open_inference_grpc.pb.h"

namespace moe {
namespace {

using google::protobuf::Descriptor;
using google::protobuf::DescriptorPool;
using google::protobuf::FieldDescriptor;

// "3 shape repeated int64", "4 parameters map<string,
// inference.InferParameter>", "1 bool_param oneof parameter_choice bool".
std::string Describe(const FieldDescriptor& f) {
  std::string type;
  if (f.is_map()) {
    const Descriptor* entry = f.message_type();
    return absl::StrCat(f.number(), " ", f.name(), " map<",
                        entry->field(0)->type_name(), ", ",
                        entry->field(1)->message_type()->full_name(), ">");
  }
  type = f.type() == FieldDescriptor::TYPE_MESSAGE
             ? f.message_type()->full_name()
             : f.type_name();
  std::string prefix;
  if (f.is_repeated()) prefix = "repeated ";
  if (f.real_containing_oneof() != nullptr) {
    prefix = absl::StrCat("oneof ", f.real_containing_oneof()->name(), " ");
  }
  return absl::StrCat(f.number(), " ", f.name(), " ", prefix, type);
}

const std::map<std::string, std::vector<std::string>>& Specification() {
  static const auto* spec = new std::map<std::string, std::vector<std::string>>{
      {"ServerLiveRequest", {}},
      {"ServerLiveResponse", {"1 live bool"}},
      {"ServerReadyRequest", {}},
      {"ServerReadyResponse", {"1 ready bool"}},
      {"ModelReadyRequest", {"1 name string", "2 version string"}},
      {"ModelReadyResponse", {"1 ready bool"}},
      {"ServerMetadataRequest", {}},
      {"ServerMetadataResponse",
       {"1 name string", "2 version string", "3 extensions repeated string"}},
      {"ModelMetadataRequest", {"1 name string", "2 version string"}},
      {"ModelMetadataResponse",
       {"1 name string", "2 versions repeated string", "3 platform string",
        "4 inputs repeated inference.ModelMetadataResponse.TensorMetadata",
        "5 outputs repeated inference.ModelMetadataResponse.TensorMetadata"}},
      {"ModelMetadataResponse.TensorMetadata",
       {"1 name string", "2 datatype string", "3 shape repeated int64"}},
      {"ModelInferRequest",
       {"1 model_name string", "2 model_version string", "3 id string",
        "4 parameters map<string, inference.InferParameter>",
        "5 inputs repeated inference.ModelInferRequest.InferInputTensor",
        "6 outputs repeated "
        "inference.ModelInferRequest.InferRequestedOutputTensor",
        "7 raw_input_contents repeated bytes"}},
      {"ModelInferRequest.InferInputTensor",
       {"1 name string", "2 datatype string", "3 shape repeated int64",
        "4 parameters map<string, inference.InferParameter>",
        "5 contents inference.InferTensorContents"}},
      {"ModelInferRequest.InferRequestedOutputTensor",
       {"1 name string", "2 parameters map<string, inference.InferParameter>"}},
      {"ModelInferResponse",
       {"1 model_name string", "2 model_version string", "3 id string",
        "4 parameters map<string, inference.InferParameter>",
        "5 outputs repeated inference.ModelInferResponse.InferOutputTensor",
        "6 raw_output_contents repeated bytes"}},
      {"ModelInferResponse.InferOutputTensor",
       {"1 name string", "2 datatype string", "3 shape repeated int64",
        "4 parameters map<string, inference.InferParameter>",
        "5 contents inference.InferTensorContents"}},
      {"InferParameter",
       {"1 bool_param oneof parameter_choice bool",
        "2 int64_param oneof parameter_choice int64",
        "3 string_param oneof parameter_choice string",
        "4 double_param oneof parameter_choice double",
        "5 uint64_param oneof parameter_choice uint64"}},
      {"InferTensorContents",
       {"1 bool_contents repeated bool", "2 int_contents repeated int32",
        "3 int64_contents repeated int64", "4 uint_contents repeated uint32",
        "5 uint64_contents repeated uint64", "6 fp32_contents repeated float",
        "7 fp64_contents repeated double", "8 bytes_contents repeated bytes"}},
      // The model repository extension's index, as Triton and MLServer
      // declare it in this service.
      {"RepositoryIndexRequest", {"1 repository_name string", "2 ready bool"}},
      {"RepositoryIndexResponse",
       {"1 models repeated inference.RepositoryIndexResponse.ModelIndex"}},
      {"RepositoryIndexResponse.ModelIndex",
       {"1 name string", "2 version string", "3 state string",
        "4 reason string"}},
      {"ModelStatisticsRequest", {"1 name string", "2 version string"}},
      {"StatisticDuration", {"1 count uint64", "2 ns uint64"}},
      {"InferStatistics",
       {"1 success inference.StatisticDuration",
        "2 fail inference.StatisticDuration",
        "3 queue inference.StatisticDuration",
        "4 compute_input inference.StatisticDuration",
        "5 compute_infer inference.StatisticDuration",
        "6 compute_output inference.StatisticDuration",
        "7 cache_hit inference.StatisticDuration",
        "8 cache_miss inference.StatisticDuration"}},
      {"InferBatchStatistics",
       {"1 batch_size uint64", "2 compute_input inference.StatisticDuration",
        "3 compute_infer inference.StatisticDuration",
        "4 compute_output inference.StatisticDuration"}},
      {"ModelStatistics",
       {"1 name string", "2 version string", "3 last_inference uint64",
        "4 inference_count uint64", "5 execution_count uint64",
        "6 inference_stats inference.InferStatistics",
        "7 batch_stats repeated inference.InferBatchStatistics"}},
      {"ModelStatisticsResponse",
       {"1 model_stats repeated inference.ModelStatistics"}},
      {"ModelInput",
       {"1 name string", "2 data_type enum", "3 format enum",
        "4 dims repeated int64", "8 optional bool"}},
      {"ModelOutput",
       {"1 name string", "2 data_type enum", "3 dims repeated int64"}},
      {"ModelConfig",
       {"1 name string", "2 platform string", "4 max_batch_size int32",
        "5 input repeated inference.ModelInput",
        "6 output repeated inference.ModelOutput", "17 backend string"}},
      {"ModelConfigRequest", {"1 name string", "2 version string"}},
      {"ModelConfigResponse", {"1 config inference.ModelConfig"}},
      {"ModelStreamInferResponse",
       {"1 error_message string",
        "2 infer_response inference.ModelInferResponse"}},
  };
  return *spec;
}

TEST(OpenInferenceProtoTest, MessagesAreTheSpecificationsFieldForField) {
  const DescriptorPool* pool = DescriptorPool::generated_pool();
  // Linked in: the generated file registers its descriptors.
  ASSERT_NE(inference::ModelInferRequest::descriptor(), nullptr);
  for (const auto& [name, fields] : Specification()) {
    SCOPED_TRACE(name);
    const Descriptor* m = pool->FindMessageTypeByName("inference." + name);
    ASSERT_NE(m, nullptr);
    std::vector<std::string> got;
    for (int i = 0; i < m->field_count(); ++i) {
      got.push_back(Describe(*m->field(i)));
    }
    EXPECT_EQ(got, fields);
  }
  // And no message the specification does not have (map entries aside).
  const google::protobuf::FileDescriptor* file =
      inference::ModelInferRequest::descriptor()->file();
  EXPECT_EQ(file->package(), "inference");
  int messages = 0;
  std::vector<const Descriptor*> todo;
  for (int i = 0; i < file->message_type_count(); ++i) {
    todo.push_back(file->message_type(i));
  }
  while (!todo.empty()) {
    const Descriptor* m = todo.back();
    todo.pop_back();
    if (m->options().map_entry()) continue;
    ++messages;
    EXPECT_EQ(Specification().count(m->full_name().substr(10)), 1u)
        << m->full_name();
    for (int i = 0; i < m->nested_type_count(); ++i) {
      todo.push_back(m->nested_type(i));
    }
  }
  EXPECT_EQ(messages, static_cast<int>(Specification().size()));
}

// Triton's enums of the model configuration, value for value.
TEST(OpenInferenceProtoTest, TheConfigurationsEnumsAreTritons) {
  auto values = [](const google::protobuf::EnumDescriptor* e) {
    std::vector<std::string> got;
    for (int i = 0; i < e->value_count(); ++i) {
      got.push_back(
          absl::StrCat(e->value(i)->number(), " ", e->value(i)->name()));
    }
    return got;
  };
  EXPECT_EQ(
      values(inference::DataType_descriptor()),
      (std::vector<std::string>{
          "0 TYPE_INVALID", "1 TYPE_BOOL", "2 TYPE_UINT8", "3 TYPE_UINT16",
          "4 TYPE_UINT32", "5 TYPE_UINT64", "6 TYPE_INT8", "7 TYPE_INT16",
          "8 TYPE_INT32", "9 TYPE_INT64", "10 TYPE_FP16", "11 TYPE_FP32",
          "12 TYPE_FP64", "13 TYPE_STRING", "14 TYPE_BF16"}));
  EXPECT_EQ(values(inference::ModelInput::Format_descriptor()),
            (std::vector<std::string>{"0 FORMAT_NONE", "1 FORMAT_NHWC",
                                      "2 FORMAT_NCHW"}));
  EXPECT_EQ(inference::ModelInput::descriptor()
                ->FindFieldByName("data_type")
                ->enum_type(),
            inference::DataType_descriptor());
}

TEST(OpenInferenceProtoTest, TheServiceIsTheSpecifications) {
  const google::protobuf::ServiceDescriptor* s =
      DescriptorPool::generated_pool()->FindServiceByName(
          "inference.GRPCInferenceService");
  ASSERT_NE(s, nullptr);
  const std::vector<std::string> expected = {
      "ServerLive(inference.ServerLiveRequest) -> inference.ServerLiveResponse",
      "ServerReady(inference.ServerReadyRequest) -> "
      "inference.ServerReadyResponse",
      "ModelReady(inference.ModelReadyRequest) -> inference.ModelReadyResponse",
      "ServerMetadata(inference.ServerMetadataRequest) -> "
      "inference.ServerMetadataResponse",
      "ModelMetadata(inference.ModelMetadataRequest) -> "
      "inference.ModelMetadataResponse",
      "ModelInfer(inference.ModelInferRequest) -> inference.ModelInferResponse",
      "RepositoryIndex(inference.RepositoryIndexRequest) -> "
      "inference.RepositoryIndexResponse",
      "ModelStatistics(inference.ModelStatisticsRequest) -> "
      "inference.ModelStatisticsResponse",
      "ModelConfig(inference.ModelConfigRequest) -> "
      "inference.ModelConfigResponse",
      "ModelStreamInfer(stream inference.ModelInferRequest) -> "
      "stream inference.ModelStreamInferResponse",
  };
  std::vector<std::string> got;
  for (int i = 0; i < s->method_count(); ++i) {
    const auto* m = s->method(i);
    got.push_back(absl::StrCat(
        m->name(), "(", m->client_streaming() ? "stream " : "",
        m->input_type()->full_name(), ") -> ",
        m->server_streaming() ? "stream " : "", m->output_type()->full_name()));
  }
  EXPECT_EQ(got, expected);
}

}  // namespace
}  // namespace moe
