"""gRPC interface of the chat model: chat.proto and the Python modules generated from it."""
