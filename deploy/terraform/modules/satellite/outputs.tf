output "dualfs_role_arn" {
  description = "IRSA role for the eks.amazonaws.com/role-arn annotation of the dualfs and efs-csi-node-sa service accounts."
  value       = aws_iam_role.dualfs.arn
}

output "efs_client_policy_arn" {
  description = "Managed policy with the EFS client permissions, for a role that the efs-csi node plugin already uses."
  value       = aws_iam_policy.efs_client.arn
}

output "local_file_system_id" {
  description = "Id of the satellite's own file system."
  value       = aws_efs_file_system.local.id
}

output "local_access_point_id" {
  description = "Id of the dualfs access point on the satellite's own file system."
  value       = aws_efs_access_point.dualfs.id
}

output "local_volume_handle" {
  description = "volumeHandle of the PersistentVolume dualfs-efs-local."
  value       = "${aws_efs_file_system.local.id}::${aws_efs_access_point.dualfs.id}"
}

output "remote_volume_handle" {
  description = "volumeHandle of the PersistentVolume dualfs-efs-core."
  value       = "${var.central.file_system_id}::${var.central.access_point_id}"
}
