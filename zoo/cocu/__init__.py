"""CoCu (Xing et al., NeurIPS 2023): offline concept curation of image–text data.

:mod:`zoo.cocu.curation` holds the algorithm (concept extraction, vision-driven expansion over
a kNN index of image embeddings, text-to-vision-guided ranking, optional cluster-guided
sampling); :mod:`zoo.cocu.rewrite` embeds a dataset with a CLIP and writes the curated captions
to new CSV / JSONL tables or WebDataset shards (``python -m zoo curate``). Nothing heavy is
imported here.
"""
