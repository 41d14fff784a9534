# The path to the central mount targets: the peering connection that the central account
# requested, routes to the mount target subnets, and a private DNS name for the file system.

resource "aws_vpc_peering_connection_accepter" "central" {
  vpc_peering_connection_id = var.central.peering_connection_id
  auto_accept               = true
  tags                      = merge(var.tags, { Name = "dualfs-${var.name}-central" })
}

resource "aws_route" "central" {
  for_each = {
    for pair in setproduct(var.private_route_table_ids, var.central.mount_target_cidrs) :
    "${pair[0]}/${pair[1]}" => { route_table_id = pair[0], cidr = pair[1] }
  }

  route_table_id            = each.value.route_table_id
  destination_cidr_block    = each.value.cidr
  vpc_peering_connection_id = aws_vpc_peering_connection_accepter.central.id
}

# The EFS mount helper resolves FILE_SYSTEM_ID.efs.REGION.amazonaws.com, which the Amazon DNS
# server answers only inside the file system's own VPC. This zone answers it in the satellite's
# VPC with the central mount target addresses. The zone holds no record of any other name.
# NOTE: the record lists every mount target, so a node may mount through one in another
# Availability Zone and pay for cross-AZ traffic. Zone names (ap-southeast-1a) map to different
# zones in different accounts, so compare zone ids (apse1-az1) when pairing subnets.
resource "aws_route53_zone" "central_efs" {
  name    = "${var.central.file_system_id}.efs.${data.aws_region.current.name}.amazonaws.com"
  comment = "Central dualfs EFS mount targets, reached over VPC peering"

  vpc {
    vpc_id = var.vpc_id
  }

  tags = var.tags
}

resource "aws_route53_record" "central_efs" {
  #checkov:skip=CKV2_AWS_23:the addresses belong to the central account's EFS mount targets, which this configuration cannot reference
  zone_id = aws_route53_zone.central_efs.zone_id
  name    = aws_route53_zone.central_efs.name
  type    = "A"
  ttl     = 60
  records = var.central.mount_target_ips
}
