# ruff: noqa: E501
"""Per-task query instructions of the official Qwen3-Embedding MTEB evaluation, for retrieval tasks.

Derived from a public copy of the official task-prompt table (`qwen3_task_prompts.json`; our copy is close
to, not byte-identical with, the official file). Only retrieval tasks are kept; where the table gives a
{query, passage} pair we keep the query side, since Qwen3-Embedding embeds documents without instruction.
A task that is not listed gets the table's default, as in the official evaluation. Task names are MTEB's;
`lookup` also accepts them in any case and without punctuation ("TREC-COVID" -> "TRECCOVID"), and every
CQADupstack<Forum>Retrieval subtask gets the CQADupstack instruction.
"""

from __future__ import annotations

import re

OFFICIAL_DEFAULT = "Given a query, retrieve the most relevant passage from the given passage"
_CQA = "Given a question, retrieve detailed question descriptions from Stackexchange that are duplicates to the given question"

TASK_INSTRUCTIONS: dict[str, str] = {
    'ArguAna': 'Given a claim, find documents that refute the claim',
    'ClimateFEVER': 'Given a claim about climate change, retrieve documents that support or refute the claim',
    'ClimateFEVERHardNegatives': 'Given a claim about climate change, retrieve documents that support or refute the claim',
    'DBPedia': 'Given a query, retrieve relevant entity descriptions from DBPedia',
    'FEVER': 'Given a claim, retrieve documents that support or refute the claim',
    'FEVERHardNegatives': 'Given a claim, retrieve documents that support or refute the claim',
    'FiQA2018': 'Given a financial question, retrieve user replies that best answer the question',
    'HotpotQA': 'Given a multi-hop question, retrieve documents that can help answer the question',
    'HotpotQAHardNegatives': 'Given a multi-hop question, retrieve documents that can help answer the question',
    'MSMARCO': 'Given a web search query, retrieve relevant passages that answer the query',
    'NFCorpus': 'Given a question, retrieve relevant documents that best answer the question',
    'NQ': 'Given a question, retrieve Wikipedia passages that answer the question',
    'QuoraRetrieval': 'Given a question, retrieve questions that are semantically equivalent to the given question',
    'SCIDOCS': 'Given a scientific paper title, retrieve paper abstracts that are cited by the given paper',
    'SciFact': 'Given a scientific claim, retrieve documents that support or refute the claim',
    'Touche2020': 'Given a question, retrieve detailed and persuasive arguments that answer the question',
    'Touche2020Retrieval.v3': 'Given a question, retrieve detailed and persuasive arguments that answer the question',
    'TRECCOVID': 'Given a query on COVID-19, retrieve documents that answer the query',
    'T2Retrieval': 'Given a Chinese search query, retrieve web passages that answer the question',
    'MMarcoRetrieval': 'Given a web search query, retrieve relevant passages that answer the query',
    'DuRetrieval': 'Given a Chinese search query, retrieve web passages that answer the question',
    'CovidRetrieval': 'Given a question on COVID-19, retrieve news articles that answer the question',
    'CmedqaRetrieval': 'Given a Chinese community medical question, retrieve replies that best answer the question',
    'EcomRetrieval': 'Given a user query from an e-commerce website, retrieve description sentences of relevant products',
    'MedicalRetrieval': 'Given a medical question, retrieve user replies that best answer the question',
    'VideoRetrieval': 'Given a video search query, retrieve the titles of relevant videos',
    'AlloprofRetrieval': 'Given a question, retrieve passages that answer the question',
    'BSARDRetrieval': 'Given a question, retrieve passages that answer the question',
    'SyntecRetrieval': 'Given a question, retrieve passages that answer the question',
    'XPQARetrieval': 'Given a question, retrieve passages that answer the question',
    'MintakaRetrieval': 'Given a question, retrieve passages that answer the question',
    'ArguAna-PL': 'Given a claim, find documents that refute the claim',
    'DBPedia-PL': 'Given a query, retrieve relevant entity descriptions from DBPedia',
    'FiQA-PL': 'Given a financial question, retrieve user replies that best answer the question',
    'HotpotQA-PL': 'Given a multi-hop question, retrieve documents that can help answer the question',
    'MSMARCO-PL': 'Given a web search query, retrieve relevant passages that answer the query',
    'NFCorpus-PL': 'Given a question, retrieve relevant documents that best answer the question',
    'NQ-PL': 'Given a question, retrieve Wikipedia passages that answer the question',
    'Quora-PL': 'Given a question, retrieve questions that are semantically equivalent to the given question',
    'SCIDOCS-PL': 'Given a scientific paper title, retrieve paper abstracts that are cited by the given paper',
    'SciFact-PL': 'Given a scientific claim, retrieve documents that support or refute the claim',
    'TRECCOVID-PL': 'Given a query on COVID-19, retrieve documents that answer the query',
    'RiaNewsRetrieval': 'Given a headline, retrieval relevant articles',
    'RuBQRetrieval': 'Given a question, retrieve Wikipedia passages that answer the question',
    'AppsRetrieval': "Given a question about code problem, retrieval code that can solve user's problem",
    'COIRCodeSearchNetRetrieval': 'Given a code snippet, retrieve the comment corresponding to that code.',
    'CodeEditSearchRetrieval': 'Given a piece of code, retrieval code that in the ',
    'CodeFeedbackMT': "Given a question about coding, retrieval code or passage that can solve user's question",
    'CodeFeedbackST': "Given a question about coding, retrieval code or passage that can solve user's question",
    'CodeSearchNetCCRetrieval': 'Given a code comment, retrieve the code snippet corresponding to that comment.',
    'CodeSearchNetRetrieval': 'Given a code snippet, retrieve the comment corresponding to that code.',
    'CodeTransOceanContest': 'Given a piece for code, retrieval semantically similar code',
    'CodeTransOceanDL': 'Given a piece for code, retrieval semantically similar code',
    'CosQA': "Given a question about coding, retrieval code or passage that can solve user's question",
    'StackOverflowQA': "Given a question about coding, retrieval code or passage that can solve user's question",
    'SyntheticText2SQL': "Given a user's question, retrieve SQL queries that are appropriate responses to the question",
    'AILAStatutes': 'Identifying the most relevant statutes for a given situation',
    'HagridRetrieval': 'Retrieval the relevant passage for the given query',
    'LegalBenchCorporateLobbying': 'Retrieval the relevant passage for the given query',
    'LEMBPasskeyRetrieval': 'Retrieval the relevant passage for the given query',
    'BelebeleRetrieval': 'Retrieval the relevant passage for the given query',
    'MLQARetrieval': 'Retrieval the relevant passage for the given query',
    'StatcanDialogueDatasetRetrieval': 'Retrieval the relevant passage for the given query',
    'WikipediaRetrievalMultilingual': 'Retrieval the relevant passage for the given query',
    'Core17InstructionRetrieval': 'Retrieval the relevant passage for the given query',
    'News21InstructionRetrieval': 'Retrieval the relevant passage for the given query',
    'Robust04InstructionRetrieval': 'Retrieval the relevant passage for the given query',
    'MIRACLRetrievalHardNegatives': 'Retrieval relevant passage for the given query',
    'TwitterHjerneRetrieval': 'Retrieve answers to questions asked in Danish tweets',
    'SpartQA': 'Given the following spatial reasoning question, retrieve the right answer.',
    'TempReasonL1': 'Given the following question about time, retrieve the correct answer.',
    'WinoGrande': 'Given the following sentence, retrieve an appropriate answer to fill in the missing underscored part.',
    'CQADupstackRetrieval': _CQA,
}


def _key(name: str) -> str:
    return re.sub(r"[^0-9a-z]", "", name.lower())


_BY_KEY = {_key(k): v for k, v in TASK_INSTRUCTIONS.items()}


def is_known(task: str) -> bool:
    """Whether the table has an instruction of its own for this task name."""
    key = _key(task)
    return key in _BY_KEY or (key.startswith("cqadupstack") and key.endswith("retrieval"))


def lookup(task: str) -> str:
    """The query instruction of an MTEB retrieval task; the official default for a task not in the table."""
    key = _key(task)
    if key in _BY_KEY:
        return _BY_KEY[key]
    if key.startswith("cqadupstack") and key.endswith("retrieval"):
        return _CQA
    return OFFICIAL_DEFAULT
