"""Audits of a built dataset root: the engine's masks against ground truth, and the reviewer against human labels.

`flows.audit.masks` scores the masklets of the `segment` and `short_captions` stages against ground-truth masks
(`storage.truth`: DAVIS PNGs, RLE JSON, synthetic sidecars) with DAVIS's region similarity J and boundary
accuracy F (`engine.metrics`), and writes `reports/audit/masks.json` with PNGs of the worst cases.
`flows.audit.review` samples the reviewer's candidates (accepted and rejected), writes a self-contained HTML
labelling page (`flows.audit.page`), makes labels from synthetic ground truth, and scores the reviewer's
decisions against labels (precision, recall, F1, accuracy, beside the paper's human audit). The `videorefer
audit` commands (`flows.cli_audit`) are thin wrappers around these functions; none of them needs Prefect.
"""
