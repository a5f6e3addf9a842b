"""Post-hoc adjustments of predicted class probabilities: calibration, label-shift adaptation, decisions for macro F1.

Not a script: inference.py, inference_tta.py and ensemble.py adjust every run's probabilities with an `Adjuster`
(`--calibrate`, `--adapt_prior em|bbse|none`, `--decision argmax|f1`), evaluation.py and reports.py measure
calibration (`expected_calibration_error`, `calibration_bins`), train.py records the prior a run was trained under
(`training_mix`). The rest are pure functions of probability arrays (N, C), torch or numpy, computed in float64.

Everything acts per task of the run's LabelScheme and is composed back with `scheme.compose`, as the multi head
composes its task softmaxes (docs/adaptation.md has the measurements behind each choice):

- **temperature** (Guo et al. 2017, "On calibration of modern neural networks"): a distribution raised to 1/T and
  renormalised, softmax(log p / T), which is dividing its logits by T. A multi head gets one T per task (applied to
  `scheme.marginals`, which are its task softmaxes), a single head one T over its classes; each T minimises the
  validation fold's negative log-likelihood. Every task keeps its most probable class, and so does the product.
- **class biases**: log p + b per task, b fitted by the same likelihood on the validation fold. A model trained on
  a few hundred people leans towards some classes on people it never saw (here: women, and away from 60+) more
  than its training prior explains; the biases measure that lean. The temperature then the biases are Alexandari
  et al.'s bias-corrected calibration ("Maximum likelihood with bias-corrected calibration is hard-to-beat at label
  shift adaptation", 2020): its posteriors answer to the validation fold's class mix.
- **prior** (label shift: the eval set has another class mix q(y) than the mix p(y) the posteriors answer to, the
  photos of one class look the same): posteriors re-weighted by q(y) / p(y) and renormalised. q is the product of
  one mix per task (the eval set's share of masks, of men, of each age band), estimated from the predictions
  without labels: by EM (Saerens, Latinne & Decaestecker 2002, "Adjusting the outputs of a classifier to new a
  priori probabilities"), which alternates re-weighting the posteriors and averaging them into the next q, or by
  BBSE (Lipton, Wang & Smola 2018, "Detecting and correcting for label shift with black box predictors"), which
  solves C w = mu: C the validation fold's joint of (soft) predicted and true class, mu the eval set's mean
  prediction, q = w * the validation mix. Both start from the bias-corrected posteriors and the validation fold's
  mix: on the raw ones EM runs to a corner (it estimated 0% men on a set of 58%). A run without validation
  predictions is adapted by EM from its raw posteriors and `training_mix`, the mix its sampler drew.
- **decision**: argmax maximises accuracy, not macro F1, which weighs every class alike. `--decision f1` answers
  argmax_k W_k p_k with W_k = exp(b_k) / (the held-out share of k): the class biases of the held-out predictions
  and their mix divided out, i.e. the Bayes answer if every class were equally likely, free of the model's lean
  (balanced accuracy's optimum, macro F1's proxy). W is the product of one weight per class of each task, fitted
  by likelihood rather than by searching the F1 of a hundred-odd photos, which overfits; where they would lower
  the held-out macro F1 they are shrunk towards argmax (3/4, 1/2, 1/4 of their logs) until they do not, and
  dropped if none holds. The answers start from the calibrated probabilities before any prior re-weighting: they
  do not depend on the eval mix, which only the probabilities (confidences, ensembles) follow.
"""
import math

import numpy as np
import torch
from scipy.optimize import minimize, minimize_scalar
from sklearn.metrics import f1_score

from dataset import LabelScheme

PRIOR_METHODS = ("em", "bbse", "none")
DECISIONS = ("f1", "argmax")
ECE_BINS = 15                       # Guo et al.'s expected calibration error
TEMPERATURES = (0.05, 20.0)         # the range searched
PRIOR_FLOOR = 1e-3                  # no class's share falls below this: re-weighting never erases a class
EM_STEPS, EM_TOLERANCE = 1000, 1e-8
DECISION_SHARES = (1.0, 0.75, 0.5, 0.25)  # of the balanced log weights tried, until the held-out macro F1 holds
TINY = torch.finfo(torch.float64).tiny


def as_float64(probabilities):
    return torch.as_tensor(np.asarray(probabilities), dtype=torch.float64)


def head_scheme(scheme, head):
    """The tasks a run's probabilities factor into: a multi head's, or one task of every class for a single head
    (each named by its tasks' names, "wear male <30": a class name holds no "/")."""
    if head == "multi" or len(scheme.tasks) == 1:
        return scheme
    return LabelScheme(scheme.name, {"class": [name.replace("/", " ") for name in scheme.classes]})


def normalise(values):
    return values / values.sum(dim=-1, keepdim=True)


def log_likelihood_loss(probabilities, labels):
    """The mean negative log-likelihood of the true labels."""
    picked = as_float64(probabilities)[torch.arange(len(labels)), torch.as_tensor(np.asarray(labels))]
    return float(-picked.clamp_min(TINY).log().mean())


def with_temperature(probabilities, temperature):
    """softmax(log p / T) of each row: flatter for T > 1, sharper for T < 1, the same most probable class."""
    return torch.softmax(as_float64(probabilities).clamp_min(TINY).log() / temperature, dim=1)


def fit_temperature(probabilities, labels):
    """The temperature that minimises the negative log-likelihood of the labels; 1 unless another does better."""
    probabilities = as_float64(probabilities)

    def loss(log_temperature):
        return log_likelihood_loss(with_temperature(probabilities, math.exp(log_temperature)), labels)

    found = minimize_scalar(loss, bounds=tuple(map(math.log, TEMPERATURES)), method="bounded")
    return math.exp(found.x) if found.fun < loss(0.0) else 1.0


def fit_temperatures(probabilities, labels, scheme):
    """One temperature per task of `scheme` (head_scheme's), fitted on held-out probabilities and their labels."""
    return [fit_temperature(task, task_labels) for task, task_labels in
            zip(scheme.marginals(as_float64(probabilities)), scheme.decode(np.asarray(labels)))]


def apply_temperatures(probabilities, temperatures, scheme):
    """Each task's distribution at its temperature, composed back into class probabilities."""
    return scheme.compose(*(with_temperature(task, temperature) for task, temperature in
                            zip(scheme.marginals(as_float64(probabilities)), temperatures)))


def fit_biases(probabilities, labels):
    """The log biases b (K,), b[0] = 0, that minimise the negative log-likelihood of softmax(log p + b)."""
    log_probabilities = as_float64(probabilities).clamp_min(TINY).log().numpy()
    onehot = np.eye(log_probabilities.shape[1])[np.asarray(labels)]

    def loss_and_gradient(free):
        logits = log_probabilities + np.concatenate([[0.0], free])
        logits -= logits.max(axis=1, keepdims=True)
        softmax = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
        loss = -(np.log(np.maximum(softmax, TINY)) * onehot).sum(axis=1).mean()
        return loss, (softmax - onehot).mean(axis=0)[1:]

    found = minimize(loss_and_gradient, np.zeros(log_probabilities.shape[1] - 1), jac=True, method="L-BFGS-B",
                     bounds=[(-10, 10)] * (log_probabilities.shape[1] - 1))
    return np.concatenate([[0.0], found.x])


def task_biases(probabilities, labels, scheme):
    """One (size,) array of log biases per task of `scheme`, each fitted on that task's marginals."""
    return [fit_biases(task, task_labels) for task, task_labels in
            zip(scheme.marginals(as_float64(probabilities)), scheme.decode(np.asarray(labels)))]


def class_weights(task_log_weights, scheme):
    """Per-class weights W (C,): the product of each task's weights, given as logs."""
    return scheme.compose(*(torch.as_tensor(np.exp(weights))[None] for weights in task_log_weights))[0]


def held_out_mixes(labels, scheme):
    """The class mix of each task among held-out labels."""
    return [torch.as_tensor(np.bincount(task_labels, minlength=size) / len(task_labels))
            for task_labels, size in zip(scheme.decode(np.asarray(labels)), scheme.sizes)]


def task_mixes(prior, scheme):
    """The mix of each task of a class prior (C,): its marginals, as a list of (size,) tensors."""
    return [task[0] for task in scheme.marginals(as_float64(prior)[None])]


def floored(mix):
    return normalise(torch.clamp_min(as_float64(mix), PRIOR_FLOOR))


def reweight(probabilities, ratio):
    """Posteriors times a per-class ratio (C,) of new to old prior, renormalised."""
    return normalise(as_float64(probabilities) * ratio)


def prior_ratio(eval_mixes, trained_under, scheme):
    """Per class (C,): the eval prior (the product of the task mixes `eval_mixes`) over the prior the posteriors
    were trained under (C,)."""
    return scheme.compose(*(floored(mix)[None] for mix in eval_mixes))[0] / floored(trained_under)


def posterior_prior(training_prior, scheme, head):
    """The prior (C,) a run's posteriors answer to: a multi head's task softmaxes each learnt its task's mix of the
    training prior, so their product answers to the product of those mixes; a single head to the prior itself."""
    training_prior = as_float64(training_prior)
    if head != "multi":
        return training_prior
    return scheme.compose(*(mix[None] for mix in task_mixes(training_prior, scheme)))[0]


def em_mixes(probabilities, trained_under, scheme, steps=EM_STEPS, tolerance=EM_TOLERANCE):
    """The eval set's mix of each task by EM (Saerens et al. 2002): start from the training mixes, re-weight the
    posteriors by the current prior over the training one, take the mean re-weighted posterior's task marginals as
    the next mixes, until they move less than `tolerance`."""
    probabilities, mixes = as_float64(probabilities), task_mixes(trained_under, scheme)
    for _ in range(steps):
        adapted = reweight(probabilities, prior_ratio(mixes, trained_under, scheme))
        updated = [task.mean(dim=0) for task in scheme.marginals(adapted)]
        moved = max(float((new - old).abs().max()) for new, old in zip(updated, mixes))
        mixes = updated
        if moved < tolerance:
            break
    return [floored(mix) for mix in mixes]


def bbse_mix(valid_probabilities, valid_labels, probabilities):
    """One task's eval mix by black-box shift estimation (Lipton et al. 2018), with soft predictions: C[j, y], the
    validation fold's mean probability of class j among photos of class y times the share of y, and mu, the eval
    set's mean probability of each class, give the weights w = q / p_validation that solve C w = mu (least squares,
    negative ones cut to 0)."""
    valid_probabilities, size = as_float64(valid_probabilities), as_float64(probabilities).shape[1]
    onehot = torch.nn.functional.one_hot(torch.as_tensor(np.asarray(valid_labels)), size).to(torch.float64)
    joint = valid_probabilities.T @ onehot / len(valid_labels)
    mean_prediction = as_float64(probabilities).mean(dim=0)
    weights = torch.linalg.lstsq(joint, mean_prediction[:, None], driver="gelsd").solution[:, 0].clamp_min(0)
    mix = weights * onehot.mean(dim=0)
    return floored(mix if mix.sum() > 0 else torch.ones(size))


def bbse_mixes(valid_probabilities, valid_labels, probabilities, scheme):
    """Each task's eval mix by BBSE on that task's marginals."""
    return [bbse_mix(valid, labels, task) for valid, labels, task in
            zip(scheme.marginals(as_float64(valid_probabilities)), scheme.decode(np.asarray(valid_labels)),
                scheme.marginals(as_float64(probabilities)))]


def macro_f1(labels, predicted, num_classes):
    """Macro F1 over all `num_classes` classes, a class never predicted nor present counting 0 (evaluation.py's)."""
    return float(f1_score(labels, predicted, labels=np.arange(num_classes), average="macro", zero_division=0))


def decide(probabilities, task_log_weights, scheme):
    """The answers argmax_k W_k p_k, W of per-task log weights."""
    return (as_float64(probabilities) * class_weights(task_log_weights, scheme)).argmax(dim=1).numpy()


def balanced_weights(probabilities, labels, scheme):
    """The per-task log weights of `--decision f1`: each task's log biases on the held-out predictions less the
    log of its held-out mix (floored), so that W p answers as if every class were equally likely."""
    return [bias - np.log(np.maximum(mix.numpy(), PRIOR_FLOOR)) for bias, mix in
            zip(task_biases(probabilities, labels, scheme), held_out_mixes(labels, scheme))]


def calibration_bins(probabilities, labels, bins=ECE_BINS):
    """(photos, mean confidence, accuracy) of each of `bins` equal-width confidence bins ((m-1)/M, m/M], the
    confidence being the largest probability and a photo right when that class is its label; empty bins hold 0."""
    probabilities, labels = np.asarray(probabilities, dtype=float), np.asarray(labels)
    confidence, right = probabilities.max(axis=1), probabilities.argmax(axis=1) == labels
    index = np.clip(np.ceil(confidence * bins).astype(int) - 1, 0, bins - 1)
    counts = np.bincount(index, minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_confidence = np.nan_to_num(np.bincount(index, confidence, minlength=bins) / counts)
        accuracy = np.nan_to_num(np.bincount(index, right, minlength=bins) / counts)
    return counts, mean_confidence, accuracy


def expected_calibration_error(probabilities, labels, bins=ECE_BINS):
    """Guo et al.'s ECE: the photo-weighted mean gap between confidence and accuracy over `bins` confidence bins."""
    counts, confidence, accuracy = calibration_bins(probabilities, labels, bins)
    return float((counts * np.abs(accuracy - confidence)).sum() / max(counts.sum(), 1))


def training_mix(sampler, targets, num_classes):
    """The class mix (C,) a training loader draws: each class's share of the sampler's weights (a weighted or
    imbalanced sampler's), or of the photos for a plain shuffle."""
    weights = getattr(sampler, "weights", None)
    weights = np.ones(len(targets)) if weights is None else np.asarray(weights, dtype=float)
    mix = np.bincount(np.asarray(targets), weights, minlength=num_classes)
    return (mix / mix.sum()).tolist()


def percentages(mix):
    return "/".join(f"{100 * share:.0f}" for share in mix)


def describe_mixes(mixes, scheme, reference, reference_name):
    """'wear 71% incorrect 14% ..., male 55% ... (validation fold 71/14/14, ...)' of task mixes."""
    shares = ", ".join(" ".join(f"{name} {100 * share:.0f}%" for name, share in zip(names, mix))
                       for names, mix in zip(scheme.tasks.values(), mixes))
    return f"{shares} ({reference_name} {', '.join(percentages(mix) for mix in task_mixes(reference, scheme))})"


def describe_weights(task_log_weights, scheme):
    """'wear 1.40 incorrect 0.95 ..., male 1.15 female 0.87, ...': each task's weights, their geometric mean 1."""
    return ", ".join(" ".join(f"{name} {math.exp(value - weights.mean()):.2f}" for name, value in zip(names, weights))
                     for names, weights in zip(scheme.tasks.values(), task_log_weights))


class HeldOut:
    """Held-out predictions (N, C), as adjusted, their labels, and what they are when not one run's own (the runs of
    a --fold all parent together), which names them in the printed lines."""

    def __init__(self, probabilities, labels, source=None):
        self.probabilities, self.labels, self.source = as_float64(probabilities), np.asarray(labels), source


class Adjuster:
    """Adjusts each run's eval probabilities as the flags ask, and then decides the answers of their mean.

    `adjust` takes one run's eval probabilities with what they are fitted on: its held-out predictions and their
    labels, with their source where they are not the run's alone (or a sentence saying why there are none), the
    prior it was trained under (or None) and its head. It calibrates, adapts the prior, prints one line of what it
    did and could not do, and returns the adjusted probabilities; it keeps the calibrated eval and held-out
    probabilities before the prior's re-weighting, which the decision starts from (it answers as if every class were
    equally likely, whatever the eval mix). `decide` fits the decision weights on the held-out predictions of every
    run or source, each once (or on `oof`, a HeldOut read from --oof), and returns the answers, or None for argmax.
    `raw` collects each run's unadjusted probabilities (--keep_raw)."""

    def __init__(self, calibrate=False, adapt_prior="none", decision="argmax", oof=None):
        self.calibrate, self.adapt_prior, self.decision, self.oof = calibrate, adapt_prior, decision, oof
        self.held_out, self.raw, self.calibrated, self.shared_temperatures = {}, [], [], {}

    @property
    def active(self):
        return self.calibrate or self.adapt_prior != "none" or self.decision != "argmax"

    def adjust(self, name, scheme, head, probabilities, held_out, training_prior):
        self.raw.append(torch.as_tensor(probabilities))
        if not self.active:
            return probabilities
        adjusted, done, missing = as_float64(probabilities), [], []
        valid = None if isinstance(held_out, str) else HeldOut(*held_out)
        if valid is None and (self.calibrate or self.adapt_prior == "bbse"):
            missing.append(f"not calibrated ({held_out})")
        if valid is not None and (self.calibrate or self.adapt_prior != "none"):  # EM and BBSE want calibration
            adjusted = self.apply_temperatures(scheme, head, adjusted, valid, done)
        self.calibrated.append(adjusted)
        if valid is not None:  # the fold runs of one --fold all parent share theirs: the decision counts it once
            self.held_out[valid.source or name] = HeldOut(valid.probabilities, valid.labels)
        if self.adapt_prior != "none":
            adjusted = self.adapt(scheme, head, adjusted, valid, training_prior, done, missing)
        if valid is None and self.decision != "argmax" and self.oof is None:
            missing.append(f"no held-out predictions for the decision ({held_out})")
        if done or missing:
            print(f"{name}: " + "; ".join(done + missing))
        return adjusted.to(torch.as_tensor(probabilities).dtype)

    def apply_temperatures(self, scheme, head, adjusted, valid, done):
        """The temperatures of the head's tasks, fitted on the held-out predictions and applied to both; those of a
        shared source (the fold runs of one --fold all parent) are fitted and said once."""
        tasks = head_scheme(scheme, head)
        temperatures = self.shared_temperatures.get(valid.source)
        if temperatures is None:
            temperatures = fit_temperatures(valid.probabilities, valid.labels, tasks)
            before, after = (log_likelihood_loss(probabilities, valid.labels) for probabilities in
                             (valid.probabilities, apply_temperatures(valid.probabilities, temperatures, tasks)))
            done.append(f"temperature {', '.join(f'{task} {t:.2f}' for task, t in zip(tasks.tasks, temperatures))} "
                        f"(validation NLL {before:.3f} -> {after:.3f} on {len(valid.labels)} photos"
                        f"{f' of {valid.source}' if valid.source else ''})")
            if valid.source is not None:
                self.shared_temperatures[valid.source] = temperatures
        valid.probabilities = apply_temperatures(valid.probabilities, temperatures, tasks)
        return apply_temperatures(adjusted, temperatures, tasks)

    def adapt(self, scheme, head, adjusted, valid, training_prior, done, missing):
        """The probabilities re-weighted to the eval mix of --adapt_prior (the held-out ones alike)."""
        method = self.adapt_prior.upper()
        if valid is not None:  # bias-corrected: the posteriors answer to the validation fold's mix
            correction = class_weights(task_biases(valid.probabilities, valid.labels, scheme), scheme)
            adjusted, valid.probabilities = reweight(adjusted, correction), reweight(valid.probabilities, correction)
            answers_to = scheme.compose(*(mix[None] for mix in held_out_mixes(valid.labels, scheme)))[0]
            reference = "validation fold"
        elif self.adapt_prior == "bbse" or training_prior is None:
            missing.append("eval mix not adapted (" + ("BBSE needs validation predictions"
                                                       if self.adapt_prior == "bbse" else
                                                       "no training prior recorded: a run saved before train.py "
                                                       "recorded it, or an exported model away from its run") + ")")
            return adjusted
        else:
            answers_to, reference = posterior_prior(training_prior, scheme, head), "trained under"
        mixes = (em_mixes(adjusted, answers_to, scheme) if self.adapt_prior == "em" else
                 bbse_mixes(valid.probabilities, valid.labels, adjusted, scheme))
        ratio = prior_ratio(mixes, answers_to, scheme)
        if valid is not None:
            valid.probabilities = reweight(valid.probabilities, ratio)
        done.append(f"eval mix by {method}: {describe_mixes(mixes, scheme, answers_to, reference)}")
        return reweight(adjusted, ratio)

    def raw_mean(self):
        return torch.stack(self.raw).mean(dim=0)

    def decide(self, scheme, probabilities=None):
        """The answers of --decision for `probabilities` (by default the runs' mean calibrated probabilities), or
        None for the argmax."""
        if self.decision == "argmax":
            return None
        if probabilities is None:
            probabilities = torch.stack(self.calibrated).mean(dim=0)
        sets = [self.oof] if self.oof is not None else list(self.held_out.values())
        if not sets:
            print("decision: argmax (no held-out predictions to fit the macro-F1 weights on)")
            return None
        held_out = torch.cat([part.probabilities for part in sets])
        labels = np.concatenate([part.labels for part in sets])
        balanced = balanced_weights(held_out, labels, scheme)
        before = macro_f1(labels, held_out.argmax(dim=1).numpy(), scheme.num_classes)
        fitted = f"{len(labels)} {'--oof' if self.oof is not None else 'validation'} photos"
        for share in DECISION_SHARES:  # the balanced weights, shrunk towards argmax until the held-out F1 holds
            log_weights = [share * weights for weights in balanced]
            if (after := macro_f1(labels, decide(held_out, log_weights, scheme), scheme.num_classes)) >= before:
                break
        else:
            print(f"decision for macro F1: argmax kept (the balanced weights fitted on {fitted} would lower their "
                  f"macro F1 {before:.3f})")
            return None
        shrunk = "" if share == 1 else f", {share:.0%} of the balanced ones in log"
        print(f"decision for macro F1: weights {describe_weights(log_weights, scheme)} (fitted on {fitted}{shrunk}: "
              f"macro F1 {before:.3f} -> {after:.3f})")
        return decide(probabilities, log_weights, scheme)
