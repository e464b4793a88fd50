#!/usr/bin/python3
"""A stock gRPC client (Debian python3-grpcio) calls grpc.health.v1.Health/Check.

usage: health_check.py ADDR [--ca CA.pem [--cert C.pem --key K.pem]]
Plaintext without --ca.  Prints the serving status (1 = SERVING) and exits 0,
or prints the gRPC error and exits 1.  No generated stubs: the request is the
empty HealthCheckRequest, the reply's field 1 is read by hand.
"""
import argparse
import sys

import grpc

ap = argparse.ArgumentParser()
ap.add_argument("addr")
ap.add_argument("--ca")
ap.add_argument("--cert")
ap.add_argument("--key")
a = ap.parse_args()


def read(path):
    with open(path, "rb") as f:
        return f.read()


if a.ca:
    creds = grpc.ssl_channel_credentials(
        root_certificates=read(a.ca),
        private_key=read(a.key) if a.key else None,
        certificate_chain=read(a.cert) if a.cert else None)
    ch = grpc.secure_channel(a.addr, creds)
else:
    ch = grpc.insecure_channel(a.addr)
check = ch.unary_unary("/grpc.health.v1.Health/Check")
try:
    reply = check(b"", timeout=5)
except grpc.RpcError as e:
    print("error: %s: %s" % (e.code(), e.details()))
    sys.exit(1)
status = reply[1] if len(reply) >= 2 and reply[0] == 0x08 else 0
print("status %d" % status)
sys.exit(0)
