#include "testing/loopback.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <cstdint>
#include <string>
#include <utility>

#include "absl/strings/ascii.h"

namespace moe::testing {

int ConnectLoopback(int port) {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return -1;
  const timeval limit{30, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &limit, sizeof(limit));
  setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &limit, sizeof(limit));
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    close(fd);
    return -1;
  }
  return fd;
}

bool SendAll(int fd, absl::string_view bytes) {
  size_t sent = 0;
  while (sent < bytes.size()) {
    const ssize_t n =
        send(fd, bytes.data() + sent, bytes.size() - sent, MSG_NOSIGNAL);
    if (n <= 0) return false;
    sent += static_cast<size_t>(n);
  }
  return true;
}

int ReadAnswer(int fd, std::string* body, std::string* head) {
  std::string in;
  char chunk[4096];
  size_t end = std::string::npos;
  while ((end = in.find("\r\n\r\n")) == std::string::npos) {
    const ssize_t n = recv(fd, chunk, sizeof(chunk), 0);
    if (n <= 0) return -1;
    in.append(chunk, static_cast<size_t>(n));
  }
  const std::string lower = absl::AsciiStrToLower(in.substr(0, end));
  const size_t at = lower.find("content-length: ");
  if (at == std::string::npos) return -1;
  const size_t length = std::stoul(lower.substr(at + 16));
  std::string rest = in.substr(end + 4);
  while (rest.size() < length) {
    const ssize_t n = recv(fd, chunk, sizeof(chunk), 0);
    if (n <= 0) return -1;
    rest.append(chunk, static_cast<size_t>(n));
  }
  if (head != nullptr) *head = in.substr(0, end);
  if (body != nullptr) *body = std::move(rest);
  return std::stoi(lower.substr(9, 3));
}

}  // namespace moe::testing
