"""The Confidential Data Hub: resources, sealed secrets, secure mounts,
the ocicrypt key provider and image pull, over ttRPC and gRPC."""
