"""The AGS event protos (wire contract with the Extend bridge) and their generated code.

Import the generated modules through `proto.build.load()`, which (re)generates them
into `proto/gen/` when missing or older than the `.proto` files.
"""
