"""An OpenAI-compatible endpoint (`/v1/models`, `/v1/chat/completions`) over the task service."""
