"""Running the real stack on one machine: `ops.stack` (the process stack, a library and `make stack`) and
`ops.stack_smoke` (a money lifecycle over HTTP against it, `make stack-smoke`)."""
