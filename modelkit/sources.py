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
]
