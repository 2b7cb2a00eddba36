"""Write vitops/_data/imagenet1k_labels.json: ImageNet-1k's 1000 class names, index = class.

The class order is the ILSVRC-2012 one (WordNet synset ids sorted, as in timm's
timm/data/_info/imagenet_synsets.txt, torchvision and TFDS); each name is the synset's WordNet
lemmas as ImageNet lists them (timm's timm/data/_info/imagenet_synset_to_lemma.txt, from
ImageNet's words.txt), e.g. "tench, Tinca tinca". Needs timm, only here: vitops reads the
JSON file. Run: python tools/make_imagenet_labels.py
"""

import json
from pathlib import Path

import timm
from timm.data import ImageNetInfo


def main() -> None:
    info = ImageNetInfo("imagenet-1k")
    labels = info.label_descriptions()
    assert len(labels) == 1000
    data = {
        "source": (
            f"timm {timm.__version__}: timm/data/_info/imagenet_synsets.txt (class order) and "
            "imagenet_synset_to_lemma.txt (WordNet lemmas per synset, from ImageNet's words.txt), "
            "via timm.data.ImageNetInfo('imagenet-1k').label_descriptions(); "
            "made by tools/make_imagenet_labels.py"
        ),
        "synsets": info.label_names(),
        "labels": labels,
    }
    path = Path(__file__).resolve().parents[1] / "vitops" / "_data" / "imagenet1k_labels.json"
    path.write_text(json.dumps(data, indent=0, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"wrote {path}: {len(labels)} names")


if __name__ == "__main__":
    main()
