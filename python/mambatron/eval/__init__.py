"""Evaluation: synthetic recall tasks, perplexity, and an lm-evaluation-harness model.

* :mod:`.tasks` — phonebook, MQAR, selective copying, passkey: seeded examples, a
  scorer and masked training batches;
* :func:`evaluate_task` — accuracy by greedy generation (JSON-ready), and
  :func:`plot_accuracy` against prompt length;
* :func:`perplexity` — nats/token, bits/byte and perplexity on an indexed dataset;
* :class:`MambatronLM` — loglikelihood, loglikelihood_rolling and generate_until
  (registered with lm_eval as "mambatron" when it is installed).
"""
from .harness import MambatronLM  # noqa: F401
from .perplexity import perplexity  # noqa: F401
from .runner import evaluate_task, plot_accuracy, save_json  # noqa: F401
from .tasks import TASKS, Example, Task, get_task  # noqa: F401
