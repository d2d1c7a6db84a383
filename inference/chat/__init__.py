"""The chat endpoint family: ``protocol`` (request/response models), ``api_router`` (HTTP
only) and ``serving`` (the logic), after vLLM's OpenAI server layout."""
