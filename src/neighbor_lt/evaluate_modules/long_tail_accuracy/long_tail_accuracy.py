"""`evaluate` metric module: top-1 accuracy Overall / Many / Medium / Few (long-tail protocol).

Load it from its local path (no Hub access):

    import evaluate, neighbor_lt
    metric = evaluate.load(neighbor_lt.LONG_TAIL_ACCURACY)
    metric.compute(predictions=[0, 1], references=[0, 2], class_counts=[200, 50, 3])
"""

import datasets
import evaluate

from neighbor_lt.metrics import long_tail_accuracy

_DESCRIPTION = """Top-1 accuracy overall and on the Many (> 100 training images), Medium (20 to 100) and Few (< 20)
class groups, as in the long-tail literature (ImageNet-LT, iNaturalist 2018, Places-LT). Also per-class accuracy."""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `int`): predicted target labels.
    references (`list` of `int`): ground-truth target labels.
    class_counts (`list` of `int`): training images per target class; defines the groups.
    many_threshold (`int`, 100): Many is more than this many training images.
    few_threshold (`int`, 20): Few is fewer than this many training images.
Returns:
    overall, many, medium, few (`float`, fraction; NaN for an empty group), per_class (`list` of `float`),
    group_sizes (`dict`).
Examples:
    >>> metric = evaluate.load("path/to/long_tail_accuracy")
    >>> metric.compute(predictions=[0, 1, 1], references=[0, 1, 2], class_counts=[200, 50, 3])["overall"]
    0.6666666666666666
"""

_CITATION = """@article{zhao2024neighbors,
  title={Learning from Neighbors: Category Extrapolation for Long-Tail Learning},
  author={Zhao, Shizhen and Wen, Xin and Liu, Jiahui and Ma, Chuofan and Yuan, Chunfeng and Qi, Xiaojuan},
  year={2024}
}"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class LongTailAccuracy(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}
            ),
        )

    def _compute(self, predictions, references, class_counts=None, many_threshold=100, few_threshold=20):
        if class_counts is None:
            raise ValueError("long_tail_accuracy needs class_counts (training images per target class)")
        return long_tail_accuracy(predictions, references, class_counts, many_threshold, few_threshold)
