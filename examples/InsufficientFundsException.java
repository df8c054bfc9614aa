package com.example.bank;

import java.math.BigDecimal;

/** Thrown when a withdrawal asks for more money than an account holds. */
public class InsufficientFundsException extends Exception {

    private final String accountId;
    private final BigDecimal balance;
    private final BigDecimal requested;

    public InsufficientFundsException(String accountId, BigDecimal balance, BigDecimal requested) {
        super("account " + accountId + " holds " + balance + " but " + requested + " was requested");
        this.accountId = accountId;
        this.balance = balance;
        this.requested = requested;
    }

    public String getAccountId() {
        return accountId;
    }

    public BigDecimal getBalance() {
        return balance;
    }

    public BigDecimal getRequested() {
        return requested;
    }

    /** How much is missing to make the withdrawal possible. */
    public BigDecimal getShortfall() {
        return requested.subtract(balance);
    }
}
