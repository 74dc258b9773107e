"""The data pipeline: captions -> question/answer/chain-of-thought synthesis -> rule and LLM-judge filtering ->
EAQA-SFT and EAQA-RL, against any OpenAI-compatible endpoint, resumable after a kill and sharded by clip.

Read in stage order: ``clips`` (audio + strong labels) -> ``caption`` -> ``synthesize`` -> ``rules`` + ``judge``
-> ``export``; ``run`` chains them; ``client`` (retries, limits, accounting), ``cache`` (request-level, append-only)
and ``store`` (atomic output chunks) are what make a kill -9 cost nothing; ``rule_questions`` is the no-LLM path.
"""
