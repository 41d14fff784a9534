# One provider per account. allowed_account_ids stops a run whose credentials land in the wrong
# account before it changes anything.

provider "aws" {
  alias               = "central"
  region              = var.region
  allowed_account_ids = [var.accounts.central]

  assume_role {
    role_arn = "arn:aws:iam::${var.accounts.central}:role/${var.deploy_role_name}"
  }

  default_tags {
    tags = var.tags
  }
}

provider "aws" {
  alias               = "satellite1"
  region              = var.region
  allowed_account_ids = [var.accounts.satellite1]

  assume_role {
    role_arn = "arn:aws:iam::${var.accounts.satellite1}:role/${var.deploy_role_name}"
  }

  default_tags {
    tags = var.tags
  }
}

provider "aws" {
  alias               = "satellite2"
  region              = var.region
  allowed_account_ids = [var.accounts.satellite2]

  assume_role {
    role_arn = "arn:aws:iam::${var.accounts.satellite2}:role/${var.deploy_role_name}"
  }

  default_tags {
    tags = var.tags
  }
}
