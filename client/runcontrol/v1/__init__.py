"""Generated protobuf and gRPC code for the runcontrol.v1 contract (do not edit: `make proto`)."""
