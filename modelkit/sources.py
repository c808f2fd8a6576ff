"""Where the default training data comes from, and under which licences.

Copied into every committed head's `meta.json`, so the attribution travels with the weights.
"""

from __future__ import annotations

__all__ = ["DEFAULT_SOURCES"]

#: One entry per upstream source of the files in the default data folder.
DEFAULT_SOURCES: list[dict[str, str]] = [
    {
        "tag": "mmlu/dev, mmlu/val, mmlu/test",
        "dataset": "MMLU (Hendrycks et al., Measuring Massive Multitask Language Understanding, ICLR 2021)",
        "url": "https://github.com/hendrycks/test",
        "revision": "785eba57b455b9f9be12a0d3c1106d67274fea0e",
        "licence": "MIT (c) 2020 Dan Hendrycks",
        "use": "question stems only, MMLU subjects mapped to the four domain labels",
    },
    {
        "tag": "mmlu_pro/test",
        "dataset": "MMLU-Pro (Wang et al., NeurIPS 2024 Datasets and Benchmarks)",
        "url": "https://github.com/TIGER-AI-Lab/MMLU-Pro",
        "revision": "ff991b5b7f14a383fd41da3987447ab6c08bf138",
        "licence": "Apache-2.0 (repository); the dataset card states MIT",
        "use": "question stems and their 14 categories",
    },
    {
        "tag": "clinc150/train, clinc150/val",
        "dataset": "CLINC150 (Larson et al., EMNLP 2019)",
        "url": "https://github.com/clinc/oos-eval",
        "revision": "828f8093932c8fe6ca7936c3d2e52903b1c523de",
        "licence": "CC BY 3.0",
        "use": "in-scope intents as 'general' chat queries (medical- and legal-sounding intents dropped)",
    },
    {
        "tag": "meqsum",
        "dataset": "MeQSum (Ben Abacha and Demner-Fushman, ACL 2019)",
        "url": "https://github.com/abachaa/MeQSum",
        "revision": "51e36cf65c12602333b6fdc3ae8ecf10430529f7",
        "licence": "CC BY 4.0",
        "use": "consumer health questions as 'medical' queries",
    },
    {
        "tag": "staqc_sql",
        "dataset": "StaQC (Yao et al., WWW 2018); titles from Stack Overflow",
        "url": "https://github.com/LittleYUYU/StackOverflow-Question-Code-Dataset",
        "revision": "81b74afb40b2c57b34a92ad94a67ade0c305d101",
        "licence": "CC BY 4.0",
        "use": "SQL question titles as 'technical' queries",
    },
    {
        "tag": "chat_train: expertqa",
        "dataset": "ExpertQA (Malaviya et al., NAACL 2024)",
        "url": "https://github.com/chaitanyamalaviya/ExpertQA",
        "revision": "1aa7ba81bd4c083c12ef1aa2fee338f6cb60fa87",
        "licence": "MIT",
        "use": "experts' questions, labelled by the asker's field",
    },
    {
        "tag": "chat_train: kqa",
        "dataset": "K-QA (Manes et al., 2024)",
        "url": "https://github.com/Itaymanes/K-QA",
        "revision": "ef403d012e199fcfa0d8c02b38a96ff95164f4d0",
        "licence": "MIT",
        "use": "patient questions as 'medical' chat messages",
    },
    {
        "tag": "chat_train: nl2bash",
        "dataset": "NL2Bash (Lin et al., LREC 2018)",
        "url": "https://github.com/TellinaTool/nl2bash",
        "revision": "466c5fe873ab08c7cc0112ea1521cc6ad9c20992",
        "licence": "MIT (data/bash/LICENSE)",
        "use": "shell task descriptions as 'technical' requests",
    },
    {
        "tag": "chat_train: gsm8k",
        "dataset": "GSM8K (Cobbe et al., Training Verifiers to Solve Math Word Problems, 2021)",
        "url": "https://github.com/openai/grade-school-math",
        "revision": "3101c7d5072418e28b9008a6636bde82a006892c",
        "licence": "MIT",
        "use": "word problems as 'general' homework questions",
    },
    {
        "tag": "chat_train: cooking_se",
        "dataset": "Cooking Stack Exchange question titles (fastText tutorial data)",
        "url": "https://cooking.stackexchange.com",
        "revision": "HuStanding/ml@890d481df3da334b1f3b13ce43eb50df829915b7",
        "licence": "CC BY-SA 3.0 (Stack Exchange content: attribution and share-alike)",
        "use": "question titles as 'general' chat questions",
    },
]
