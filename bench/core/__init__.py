"""advarena's bottom layer: what every other layer may use and that uses none of them."""
