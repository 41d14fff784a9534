# The reference environment: one central account and two satellite accounts in ap-southeast-1,
# with the addresses of the reference VPCs. The VPCs, subnets and EKS clusters exist already
# and are looked up by CIDR and name. The providers tag every resource (default_tags).

module "central_network" {
  source    = "./network-lookup"
  providers = { aws = aws.central }

  vpc_cidr     = var.vpc_cidrs.central
  subnet_cidrs = { for zone, subnet in var.central_efs_subnets : zone => subnet.cidr }
}

module "satellite1_network" {
  source    = "./network-lookup"
  providers = { aws = aws.satellite1 }

  vpc_cidr = var.vpc_cidrs.satellite1
  subnet_cidrs = merge(
    { for zone, cidr in var.satellites.satellite1.private_subnets : "private-${zone}" => cidr },
    { for zone, cidr in var.satellites.satellite1.efs_subnets : "efs-${zone}" => cidr },
  )
}

module "satellite2_network" {
  source    = "./network-lookup"
  providers = { aws = aws.satellite2 }

  vpc_cidr = var.vpc_cidrs.satellite2
  subnet_cidrs = merge(
    { for zone, cidr in var.satellites.satellite2.private_subnets : "private-${zone}" => cidr },
    { for zone, cidr in var.satellites.satellite2.efs_subnets : "efs-${zone}" => cidr },
  )
}

data "aws_eks_cluster" "satellite1" {
  provider = aws.satellite1
  name     = var.satellites.satellite1.cluster_name
}

data "aws_iam_openid_connect_provider" "satellite1" {
  provider = aws.satellite1
  url      = data.aws_eks_cluster.satellite1.identity[0].oidc[0].issuer
}

data "aws_eks_cluster" "satellite2" {
  provider = aws.satellite2
  name     = var.satellites.satellite2.cluster_name
}

data "aws_iam_openid_connect_provider" "satellite2" {
  provider = aws.satellite2
  url      = data.aws_eks_cluster.satellite2.identity[0].oidc[0].issuer
}

module "central" {
  source    = "../../modules/central"
  providers = { aws = aws.central }

  name                         = "dualfs-core"
  vpc_id                       = module.central_network.vpc_id
  route_table_ids              = distinct(values(module.central_network.route_table_ids))
  provisioned_throughput_mibps = 1000

  mount_targets = {
    for zone, subnet in var.central_efs_subnets : zone => {
      subnet_id  = module.central_network.subnet_ids[zone]
      ip_address = subnet.ip_address
    }
  }

  satellites = {
    satellite1 = {
      account_id   = var.accounts.satellite1
      vpc_id       = module.satellite1_network.vpc_id
      vpc_cidr     = var.vpc_cidrs.satellite1
      client_cidrs = values(var.satellites.satellite1.private_subnets)
      role_arn     = module.satellite1.dualfs_role_arn
    }
    satellite2 = {
      account_id   = var.accounts.satellite2
      vpc_id       = module.satellite2_network.vpc_id
      vpc_cidr     = var.vpc_cidrs.satellite2
      client_cidrs = values(var.satellites.satellite2.private_subnets)
      role_arn     = module.satellite2.dualfs_role_arn
    }
  }
}

locals {
  # What each satellite needs to know of the central file system.
  central_for = {
    for name in ["satellite1", "satellite2"] : name => {
      file_system_id        = module.central.file_system_id
      file_system_arn       = module.central.file_system_arn
      access_point_id       = module.central.access_points[name].id
      access_point_arn      = module.central.access_points[name].arn
      mount_target_ips      = [for subnet in values(var.central_efs_subnets) : subnet.ip_address]
      mount_target_cidrs    = [for subnet in values(var.central_efs_subnets) : subnet.cidr]
      peering_connection_id = module.central.peering_connection_ids[name]
    }
  }
}

module "satellite1" {
  source    = "../../modules/satellite"
  providers = { aws = aws.satellite1 }

  name         = "satellite1"
  vpc_id       = module.satellite1_network.vpc_id
  client_cidrs = values(var.satellites.satellite1.private_subnets)
  private_route_table_ids = distinct([
    for key, table in module.satellite1_network.route_table_ids : table if startswith(key, "private-")
  ])
  provisioned_throughput_mibps = 500

  mount_targets = {
    for zone in keys(var.satellites.satellite1.efs_subnets) : zone => {
      subnet_id = module.satellite1_network.subnet_ids["efs-${zone}"]
    }
  }

  oidc_provider_arn = data.aws_iam_openid_connect_provider.satellite1.arn
  oidc_issuer       = trimprefix(data.aws_eks_cluster.satellite1.identity[0].oidc[0].issuer, "https://")
  central           = local.central_for.satellite1
}

module "satellite2" {
  source    = "../../modules/satellite"
  providers = { aws = aws.satellite2 }

  name         = "satellite2"
  vpc_id       = module.satellite2_network.vpc_id
  client_cidrs = values(var.satellites.satellite2.private_subnets)
  private_route_table_ids = distinct([
    for key, table in module.satellite2_network.route_table_ids : table if startswith(key, "private-")
  ])
  provisioned_throughput_mibps = 500

  mount_targets = {
    for zone in keys(var.satellites.satellite2.efs_subnets) : zone => {
      subnet_id = module.satellite2_network.subnet_ids["efs-${zone}"]
    }
  }

  oidc_provider_arn = data.aws_iam_openid_connect_provider.satellite2.arn
  oidc_issuer       = trimprefix(data.aws_eks_cluster.satellite2.identity[0].oidc[0].issuer, "https://")
  central           = local.central_for.satellite2
}
