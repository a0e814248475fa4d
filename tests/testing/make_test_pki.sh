#!/bin/bash
# Writes a small PKI for the TLS tests into DIR with openssl:
#   ca          signs the servers' certificates and the clients'
#   router_ca   signs the router's client certificate toward the workers
#   other_ca    signs a certificate nobody trusts
#   server, server2   serverAuth, for 127.0.0.1 and localhost (server2: the
#                     rotation's new certificate, CN server-2)
#   client            clientAuth, of ca
#   router_client     clientAuth, of router_ca
#   stranger          clientAuth, of other_ca
# Usage: make_test_pki.sh DIR
set -euo pipefail
dir=$1
mkdir -p "$dir"
cd "$dir"
key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1.key" 2>/dev/null; }
ca() {
  key "$1"
  openssl req -x509 -key "$1.key" -out "$1.crt" -days 2 -subj "/CN=$1" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign"
}
leaf() {  # name issuer usage cn
  key "$1"
  openssl req -new -key "$1.key" -out "$1.csr" -subj "/CN=$4"
  printf "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=%s\nbasicConstraints=CA:FALSE\n" "$3" > "$1.ext"
  openssl x509 -req -in "$1.csr" -CA "$2.crt" -CAkey "$2.key" -CAcreateserial \
    -out "$1.crt" -days 2 -extfile "$1.ext" 2>/dev/null
  rm -f "$1.csr" "$1.ext"
}
ca ca
ca router_ca
ca other_ca
leaf server ca serverAuth server-1
leaf server2 ca serverAuth server-2
leaf client ca clientAuth client
leaf router_client router_ca clientAuth router
leaf stranger other_ca clientAuth stranger
