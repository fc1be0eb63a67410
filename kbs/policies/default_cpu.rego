package policy

import rego.v1

# Default CPU appraisal policy (id "default_cpu"). Its rules, claim paths and
# reference-value names follow trustee v0.21.0's ear_default_policy_cpu.rego,
# so the same verifier claims and reference values give the same AR4SI trust
# vector and EAR status as trustee. Input is the submod's annotated evidence:
# the TEE's claims under its name, plus init_data / report_data /
# init_data_claims / runtime_data_claims when the verifier bound them.
#
# Unset claims: executables 33 (unrecognised executables), hardware 97
# (unrecognised hardware), configuration 36 (configuration unavailable); the
# other five are 0 (no assertion). TEEs without rules here (sgx, cca, csv,
# hygondcu, ...) therefore come out contraindicated, as in trustee.

default executables := 33

default hardware := 97

default configuration := 36

default file_system := 0

default instance_identity := 0

default runtime_opaque := 0

default storage_opaque := 0

default sourced_data := 0

trust_claims := {
	"executables": executables,
	"hardware": hardware,
	"configuration": configuration,
	"file-system": file_system,
	"instance-identity": instance_identity,
	"runtime-opaque": runtime_opaque,
	"storage-opaque": storage_opaque,
	"sourced-data": sourced_data,
}

# --- sample (development TEE) ---------------------------------------------
# reference values: launch_digest, svn, major_version, minimum_minor_version

executables := 3 if {
	input.sample
	input.sample.launch_digest in query_reference_value("launch_digest")
}

hardware := 2 if {
	input.sample
	input.sample.svn in query_reference_value("svn")
	input.sample.platform_version.major == query_reference_value("major_version")
	input.sample.platform_version.minor >= query_reference_value("minimum_minor_version")
}

configuration := 2 if {
	input.sample
	input.sample.debug == false
}

# --- snp ------------------------------------------------------------------
# reference values: snp_launch_measurement; snp_bootloader, snp_microcode,
# snp_snp_svn, snp_tee_svn; snp_smt_enabled, snp_tsme_enabled,
# snp_guest_abi_major, snp_guest_abi_minor, snp_single_socket, snp_smt_allowed

executables := 3 if {
	input.snp
	input.snp.measurement in query_reference_value("snp_launch_measurement")
}

hardware := 2 if {
	input.snp
	input.snp.reported_tcb_bootloader in query_reference_value("snp_bootloader")
	input.snp.reported_tcb_microcode in query_reference_value("snp_microcode")
	input.snp.reported_tcb_snp in query_reference_value("snp_snp_svn")
	input.snp.reported_tcb_tee in query_reference_value("snp_tee_svn")
}

# every configuration field known: 2; only debug and migration agent off: 3
configuration := 2 if {
	input.snp
	_snp_policy_locked
	input.snp.platform_smt_enabled == query_reference_value("snp_smt_enabled")
	input.snp.platform_tsme_enabled == query_reference_value("snp_tsme_enabled")
	input.snp.policy_abi_major == query_reference_value("snp_guest_abi_major")
	input.snp.policy_abi_minor == query_reference_value("snp_guest_abi_minor")
	input.snp.policy_single_socket == query_reference_value("snp_single_socket")
	input.snp.policy_smt_allowed == query_reference_value("snp_smt_allowed")
} else := 3 if {
	input.snp
	_snp_policy_locked
}

_snp_policy_locked if {
	input.snp.policy_debug_allowed == false
	input.snp.policy_migrate_ma == false
}

# --- tdx ------------------------------------------------------------------
# reference values: rtmr_1, rtmr_2, tdvfkernel, tdvfkernelparams; mr_td; xfam

# kernel/initrd/cmdline in RTMR 1/2 and the kernel and its parameters in the
# UEFI event log: 3; the RTMRs alone (GRUB boot, as on GKE): 4
executables := 3 if {
	_tdx_rtmrs_known
	_tdx_kernel_event_known
	_tdx_kernel_params_event_known
} else := 4 if {
	_tdx_rtmrs_known
}

_tdx_rtmrs_known if {
	input.tdx
	input.tdx.quote.body.rtmr_1 in query_reference_value("rtmr_1")
	input.tdx.quote.body.rtmr_2 in query_reference_value("rtmr_2")
}

_tdx_kernel_event_known if {
	some event in input.tdx.uefi_event_logs
	event.type_name == "EV_EFI_BOOT_SERVICES_APPLICATION"
	"File(kernel)" in event.details.device_paths
	some d in event.digests
	d.digest == query_reference_value("tdvfkernel")
}

_tdx_kernel_params_event_known if {
	some event in input.tdx.uefi_event_logs
	event.type_name == "EV_EVENT_TAG"
	event.details.string == "LOADED_IMAGE::LoadOptions"
	some d in event.digests
	d.digest == query_reference_value("tdvfkernelparams")
}

# an Intel-signed TDX quote, known TD firmware (MRTD), TCB up to date and
# unexpired collateral
hardware := 2 if {
	input.tdx
	input.tdx.quote.header.tee_type == "81000000"
	input.tdx.quote.header.vendor_id == "939a7233f79c4ca9940a0db3957f0607"
	input.tdx.quote.body.mr_td in query_reference_value("mr_td")
	input.tdx.tcb_status == "UpToDate"
	input.tdx.collateral_expiration_status == "0"
}

configuration := 2 if {
	input.tdx
	input.tdx.td_attributes.debug == false
	input.tdx.quote.body.xfam in query_reference_value("xfam")
}

# --- az-snp-vtpm (Azure confidential VM, SEV-SNP) -------------------------
# reference values: measurement, snp_pcr11; tcb_bootloader, tcb_microcode,
# tcb_snp, tcb_tee; smt_enabled, tsme_enabled, abi_major, abi_minor,
# single_socket, smt_allowed

executables := 3 if {
	input["az-snp-vtpm"]
	input["az-snp-vtpm"].measurement in query_reference_value("measurement")
	input["az-snp-vtpm"].tpm.pcr11 in query_reference_value("snp_pcr11")
}

hardware := 2 if {
	input["az-snp-vtpm"]
	input["az-snp-vtpm"].reported_tcb_bootloader in query_reference_value("tcb_bootloader")
	input["az-snp-vtpm"].reported_tcb_microcode in query_reference_value("tcb_microcode")
	input["az-snp-vtpm"].reported_tcb_snp in query_reference_value("tcb_snp")
	input["az-snp-vtpm"].reported_tcb_tee in query_reference_value("tcb_tee")
}

configuration := 2 if {
	input["az-snp-vtpm"]
	input["az-snp-vtpm"].platform_smt_enabled in query_reference_value("smt_enabled")
	input["az-snp-vtpm"].platform_tsme_enabled in query_reference_value("tsme_enabled")
	input["az-snp-vtpm"].policy_abi_major in query_reference_value("abi_major")
	input["az-snp-vtpm"].policy_abi_minor in query_reference_value("abi_minor")
	input["az-snp-vtpm"].policy_single_socket in query_reference_value("single_socket")
	input["az-snp-vtpm"].policy_smt_allowed in query_reference_value("smt_allowed")
}

# --- az-tdx-vtpm (Azure confidential VM, TDX) -----------------------------
# reference values: tdx_pcr11; mr_td; xfam

executables := 3 if {
	input["az-tdx-vtpm"]
	input["az-tdx-vtpm"].tpm.pcr11 in query_reference_value("tdx_pcr11")
}

hardware := 2 if {
	input["az-tdx-vtpm"]
	input["az-tdx-vtpm"].quote.header.tee_type == "81000000"
	input["az-tdx-vtpm"].quote.header.vendor_id == "939a7233f79c4ca9940a0db3957f0607"
	input["az-tdx-vtpm"].quote.body.mr_td in query_reference_value("mr_td")
	input["az-tdx-vtpm"].tcb_status == "UpToDate"
}

configuration := 2 if {
	input["az-tdx-vtpm"]
	input["az-tdx-vtpm"].quote.body.xfam in query_reference_value("xfam")
}

# --- tpm ------------------------------------------------------------------
# reference values: tpm_pcr11, trusted_aks

hardware := 2 if {
	input.tpm
}

executables := 3 if {
	input.tpm
	input.tpm.pcr11 in query_reference_value("tpm_pcr11")
	input.tpm.ak_public in query_reference_value("trusted_aks")
}

configuration := 0 if {
	input.tpm
}

# --- se (IBM Secure Execution): the verifier checked everything -----------

executables := 3 if {
	input.se
}

hardware := 2 if {
	input.se
}

configuration := 2 if {
	input.se
}

# --- extensions -----------------------------------------------------------
# ear.trustee.identifiers (key -18): workload identifiers bound through the
# init-data's Kata agent policy (init_data_claims.agent_policy_claims).

extensions := [{
	"name": "ear.trustee.identifiers",
	"key": -18,
	"value": {"validated": validated_identifiers},
}]

validated_identifiers := object.union_n([_images_id, _uids_id])

_containers := [c | some c in input.init_data_claims.agent_policy_claims.containers]

_images := [img |
	some c in _containers
	img := c.OCI.Annotations["io.kubernetes.cri.image-name"]
]

_uids := [uid |
	some c in _containers
	uid := c.OCI.Process.User.UID
]

_images_id := {"container_images": _images} if {
	count(_images) > 0
} else := {}

_uids_id := {"container_uids": _uids} if {
	count(_uids) > 0
} else := {}
