# Looks up an existing VPC, its subnets and their route tables by CIDR, so the example can be
# written with the reference addresses instead of resource ids.

terraform {
  required_providers {
    aws = {
      source = "hashicorp/aws"
    }
  }
}

variable "vpc_cidr" {
  description = "CIDR of the VPC."
  type        = string
}

variable "subnet_cidrs" {
  description = "CIDRs of the subnets to look up, keyed by any name (the example uses the AZ)."
  type        = map(string)
}

data "aws_vpc" "this" {
  cidr_block = var.vpc_cidr
}

data "aws_subnet" "this" {
  for_each = var.subnet_cidrs

  vpc_id     = data.aws_vpc.this.id
  cidr_block = each.value
}

data "aws_route_table" "this" {
  for_each = var.subnet_cidrs

  subnet_id = data.aws_subnet.this[each.key].id
}

output "vpc_id" {
  description = "Id of the VPC."
  value       = data.aws_vpc.this.id
}

output "subnet_ids" {
  description = "Subnet ids, keyed like subnet_cidrs."
  value       = { for key, subnet in data.aws_subnet.this : key => subnet.id }
}

output "route_table_ids" {
  description = "Route table id of each subnet, keyed like subnet_cidrs."
  value       = { for key, table in data.aws_route_table.this : key => table.id }
}
