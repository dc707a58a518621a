"""Row (a) of bench/speed.py: the plain Optuna loop a user writes from the well-known focal-loss blog
post, as its own script with only the blog's imports: per trial an ImageFolder + DataLoader over PNG
files, the blog's FocalLoss, the two-conv CNN, TPE, the objective test accuracy.

    python bench/blog_loop.py TREE cpu|cuda BEST.pt [TRIALS [SEED]]

Prints one JSON line: when the search ended (time.time()), the best parameters and value; saves the
best trial's weights to BEST.pt for bench/speed.py to score (outside the timing). With more than two
class folders the loop takes the obvious extension (not in the blog): one output per class, softmax
cross-entropy inside the same focal loss, test accuracy of the argmax.
"""

import json
import sys
import time
from pathlib import Path

import optuna
import torch
from torchvision import transforms as T
from torchvision.datasets import ImageFolder

TRIALS, EPOCHS, BATCH = 8, 5, 16
TF = T.Compose([T.Grayscale(1), T.Resize((32, 32)), T.ToTensor(), T.Normalize([0.5], [0.5])])


class FocalLoss(torch.nn.Module):
    """The blog's focal loss, bugs kept: one alpha for both classes, (1 - pt)**gamma in prob space."""

    def __init__(self, alpha=0.25, gamma=2.0):
        super().__init__()
        self.alpha, self.gamma = alpha, gamma

    def forward(self, inputs, targets):
        if inputs.shape[1] == 1:
            bce = torch.nn.functional.binary_cross_entropy_with_logits(inputs, targets, reduction="none")
        else:  # more classes, the obvious extension: softmax cross-entropy in its place, alpha still one number
            bce = torch.nn.functional.cross_entropy(inputs, targets, reduction="none")
        pt = torch.exp(-bce)
        return (self.alpha * (1 - pt) ** self.gamma * bce).mean()


class BlogCNN(torch.nn.Module):
    """The blog's two-conv CNN as it writes it: conv-relu-pool twice, a linear head, default layout.
    The same network as tuner's SimpleCNN (same parameters, same function), without its speed-ups."""

    def __init__(self, classes: int = 2):
        super().__init__()
        self.features = torch.nn.Sequential(
            torch.nn.Conv2d(1, 16, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
            torch.nn.Conv2d(16, 32, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2), torch.nn.Flatten())
        self.head = torch.nn.Linear(32 * 8 * 8, 1 if classes == 2 else classes)

    def forward(self, x):
        return self.head(self.features(x))


def main(tree: Path, device: torch.device, best_path: str, trials: int = TRIALS, seed: int = 0) -> None:
    kept = {}  # not in the blog: each trial's weights, to score the best trial afterwards
    classes = len(ImageFolder(tree / "train").classes)

    def objective(trial):
        gamma = trial.suggest_float("gamma", 0.0, 5.0)
        alpha = trial.suggest_float("alpha", 0.05, 0.95)
        train = torch.utils.data.DataLoader(ImageFolder(tree / "train", TF), batch_size=BATCH, shuffle=True)
        test = torch.utils.data.DataLoader(ImageFolder(tree / "test", TF), batch_size=BATCH)
        model = BlogCNN(classes).to(device)
        criterion, opt = FocalLoss(alpha, gamma), torch.optim.Adam(model.parameters(), lr=1e-3)
        for _ in range(EPOCHS):
            model.train()
            for x, y in train:
                x, y = x.to(device), (y.to(device).float().unsqueeze(1) if classes == 2 else y.to(device))
                opt.zero_grad()
                loss = criterion(model(x), y)
                loss.backward()
                opt.step()
        model.eval()
        with torch.no_grad():
            hits = [(((model(x.to(device)) > 0).long().squeeze(1) if classes == 2 else model(x.to(device)).argmax(1)).cpu() == y)
                    for x, y in test]
        kept[trial.number] = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        return torch.cat(hits).float().mean().item()

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    torch.manual_seed(seed)
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=seed))
    study.optimize(objective, n_trials=trials)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    ended = time.time()
    torch.save(kept[study.best_trial.number], best_path)
    print(json.dumps({"ended": ended, "params": study.best_params, "best_value": study.best_value}))


if __name__ == "__main__":
    main(Path(sys.argv[1]), torch.device(sys.argv[2]), sys.argv[3], *map(int, sys.argv[4:6]))
