"""pitstop.recipes: the recipe collection, composition, the sbatch launcher and the training runtime."""
