# The IRSA role of the satellite. EFS authorizes the "iam" mount option with the credentials of
# the process that mounts: the efs-csi node plugin, so its service account must assume this role.

data "aws_iam_policy_document" "assume" {
  statement {
    sid     = "EksServiceAccounts"
    actions = ["sts:AssumeRoleWithWebIdentity"]

    principals {
      type        = "Federated"
      identifiers = [var.oidc_provider_arn]
    }

    condition {
      test     = "StringEquals"
      variable = "${var.oidc_issuer}:aud"
      values   = ["sts.amazonaws.com"]
    }

    condition {
      test     = "StringEquals"
      variable = "${var.oidc_issuer}:sub"
      values   = [for account in var.service_accounts : "system:serviceaccount:${account}"]
    }
  }
}

resource "aws_iam_role" "dualfs" {
  name                 = coalesce(var.role_name, "dualfs-${var.name}")
  description          = "Mounts the local and the central dualfs trees of ${var.name} through their EFS access points"
  assume_role_policy   = data.aws_iam_policy_document.assume.json
  max_session_duration = 3600
  tags                 = var.tags
}

data "aws_iam_policy_document" "efs_client" {
  statement {
    sid       = "CentralThroughAccessPoint"
    actions   = ["elasticfilesystem:ClientMount", "elasticfilesystem:ClientWrite"]
    resources = [var.central.file_system_arn]

    condition {
      test     = "StringEquals"
      variable = "elasticfilesystem:AccessPointArn"
      values   = [var.central.access_point_arn]
    }
  }

  statement {
    sid       = "LocalThroughAccessPoint"
    actions   = ["elasticfilesystem:ClientMount", "elasticfilesystem:ClientWrite"]
    resources = [aws_efs_file_system.local.arn]

    condition {
      test     = "StringEquals"
      variable = "elasticfilesystem:AccessPointArn"
      values   = [aws_efs_access_point.dualfs.arn]
    }
  }
}

# A managed policy rather than an inline one, so a cluster whose efs-csi node service account
# already has a role can attach it there instead (output efs_client_policy_arn).
resource "aws_iam_policy" "efs_client" {
  name        = "${coalesce(var.role_name, "dualfs-${var.name}")}-efs-client"
  description = "NFS mount and write on the local and central dualfs trees, through their access points only"
  policy      = data.aws_iam_policy_document.efs_client.json
  tags        = var.tags
}

resource "aws_iam_role_policy_attachment" "efs_client" {
  role       = aws_iam_role.dualfs.name
  policy_arn = aws_iam_policy.efs_client.arn
}
