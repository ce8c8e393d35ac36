"""``%llm`` magics: grammar in :mod:`.parsers` and :mod:`.commands`, dispatch in :mod:`.magics`."""
