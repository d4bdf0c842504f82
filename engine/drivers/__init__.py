"""How a task's context reaches its model: appended to a local KV cache token by token
(`local`), or streamed from a server that samples for itself and is aborted and resubmitted to
take an interrupt (`remote`). The scheduler picks one per task from its backend's kind."""
